"""Wheel build hook: compile quotaflow's hot path with mypyc.

The uncontended ``acquire`` + ``settle`` runs through five modules (``COMPILED``). mypyc
turns them into C extension modules, which cuts that path from about 2.5 us to about 1.1 us (see
``benchmarks/overhead.py`` and the README's design section). The same source is the pure-Python
fallback, so behaviour never depends on the build (``tests/test_compiled.py``):

* editable installs (``pip install -e .``) are never compiled, so edits take effect at once;
* ``QUOTAFLOW_PURE_PYTHON=1`` builds a pure-Python wheel and asks for no build dependencies
  (for machines that cannot install mypy and setuptools: every build, editable ones included,
  asks for them otherwise, since a hook is not told which kind of build asks);
* if compiling fails (no C compiler, an unsupported interpreter), the wheel is built pure
  Python with a warning, unless ``QUOTAFLOW_REQUIRE_COMPILED=1`` (CI) makes it an error.

The compile runs in a temporary copy of the package, so no ``.so`` file is left in the source
tree to shadow the ``.py`` files an editable install imports.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

COMPILED = (
    "quotaflow/_lane.py",
    "quotaflow/_permit_state.py",
    "quotaflow/permit.py",
    "quotaflow/_gate.py",
    "quotaflow/_front.py",
)

_SETUP = """
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="quotaflow-hot-path",
    ext_modules=mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", *{files!r}],
        opt_level="3",
        group_name="quotaflow",
    ),
)
"""


class MypycHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def _wanted(self) -> bool:
        return os.environ.get("QUOTAFLOW_PURE_PYTHON", "") not in ("1", "true", "yes")

    def dependencies(self) -> list[str]:
        return ["mypy>=1.10", "setuptools"] if self._wanted() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable" or not self._wanted():
            return
        try:
            built = self._compile()
        except Exception as exc:
            if os.environ.get("QUOTAFLOW_REQUIRE_COMPILED", "") in ("1", "true", "yes"):
                raise
            self.app.display_warning(
                f"quotaflow: compiling the hot path with mypyc failed; building a pure-Python "
                f"wheel (set QUOTAFLOW_PURE_PYTHON=1 to skip the attempt): {exc}"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["force_include"].update(built)

    def _compile(self) -> dict[str, str]:
        work = tempfile.mkdtemp(prefix="quotaflow-mypyc-")
        self._work = work
        shutil.copytree(os.path.join(self.root, "quotaflow"), os.path.join(work, "quotaflow"))
        with open(os.path.join(work, "setup.py"), "w", encoding="utf-8") as f:
            f.write(_SETUP.format(files=list(COMPILED)))
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if proc.returncode:
            tail = proc.stdout.decode("utf-8", "replace")[-3000:]
            raise RuntimeError(f"mypyc exited with {proc.returncode}:\n{tail}")
        built: dict[str, str] = {}
        for path in glob.glob(os.path.join(work, "**", "*.so"), recursive=True) + glob.glob(
            os.path.join(work, "**", "*.pyd"), recursive=True
        ):
            rel = os.path.relpath(path, work)
            if not rel.startswith("build" + os.sep):
                built[path] = rel.replace(os.sep, "/")
        wanted = {os.path.splitext(p)[0] for p in COMPILED}
        got = {rel.split(".", 1)[0] for rel in built.values()}
        if not wanted <= got:
            raise RuntimeError(f"mypyc built {sorted(got)}, expected {sorted(wanted)}")
        return built

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work:
            shutil.rmtree(work, ignore_errors=True)
