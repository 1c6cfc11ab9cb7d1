"""The built wheel ships the tier tables inside the package, and the loader finds them there.

The top-level ``tier_tables/`` directory is outside the package; pyproject force-includes it in
the wheel as ``quotaflow/_tier_tables``. An editable install reads the top-level directory
instead (tested in test_tiers.py), so both lookups are covered.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from quotaflow.tiers import SHIPPED_TIERS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 55.0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    out = tmp_path_factory.mktemp("dist")
    # Without isolation when hatchling is importable: fast and offline. Otherwise build's
    # isolated environment must fetch hatchling from the package index.
    isolated = importlib.util.find_spec("hatchling") is None
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)]
    if not isolated:
        cmd.insert(4, "--no-isolation")
    # pure Python: this checks the files the wheel ships; `.ci/compiled` builds the compiled
    # wheel and runs the whole suite against it
    env = {**os.environ, "QUOTAFLOW_PURE_PYTHON": "1"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        if isolated:
            pytest.skip("building the wheel timed out fetching hatchling (offline?)")
        raise
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-2000:]
        if isolated:
            pytest.skip(f"cannot build the wheel in an isolated environment (offline?): {output}")
        pytest.fail(f"building the wheel failed:\n{output}")
    (built,) = out.glob("quotaflow-*.whl")
    return built


def test_wheel_contains_tier_tables_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for tier in SHIPPED_TIERS:
        assert f"quotaflow/_tier_tables/{tier}.toml" in names
    assert "quotaflow/_tier_tables/prices/gemini.toml" in names
    assert "quotaflow/py.typed" in names
    assert "quotaflow/tiers.py" in names
    assert not any(n.startswith("tier_tables/") for n in names)


def test_installed_wheel_loads_its_own_tables(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel: unpacking installs it
    script = textwrap.dedent(
        """
        import quotaflow.tiers as tiers
        print(tiers.__file__)
        print(tiers._shipped_dir())
        for tier in tiers.SHIPPED_TIERS:
            tiers.load_tier(tier)
        print(tiers.load_tier("tier1").resolve("models/gemini-2.5-flash")[1].rpm)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    module_file, tables_dir, rpm = proc.stdout.split()
    assert Path(module_file).is_relative_to(site)
    assert Path(tables_dir) == site / "quotaflow" / "_tier_tables"
    assert rpm == "1000"


def _build_with_mypyc_broken(tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """Build a wheel where the C compiler fails (``CC`` is a script that says so and exits 1),
    as on a machine without one: the hook's fallback decides what comes out."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'no C compiler here (a test)' >&2\nexit 1\n")
    cc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
    env.update(CC=str(cc), **env_extra)
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(4, "--no-isolation")
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=3 * BUILD_TIMEOUT, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.skip("building the wheel timed out (fetching the build dependencies, offline?)")


def test_a_wheel_whose_compiling_fails_is_pure_python_and_says_so(tmp_path: Path) -> None:
    proc = _build_with_mypyc_broken(tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-2000:]
    assert "compiling the hot path with mypyc failed" in output
    assert "no C compiler here" in output  # the cause, for the user to act on
    (built,) = (tmp_path / "dist").glob("quotaflow-*.whl")
    assert built.name.endswith("-py3-none-any.whl")  # pure: installs anywhere
    names = zipfile.ZipFile(built).namelist()
    assert "quotaflow/_gate.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


def test_a_wheel_that_must_be_compiled_fails_to_build_when_compiling_fails(tmp_path: Path) -> None:
    proc = _build_with_mypyc_broken(tmp_path, QUOTAFLOW_REQUIRE_COMPILED="1")
    assert proc.returncode != 0
    assert "no C compiler here" in proc.stdout + proc.stderr
    assert not list((tmp_path / "dist").glob("*.whl"))
