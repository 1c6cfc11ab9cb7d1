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

from quotaflow.quotas.tiers import SHIPPED_TIERS

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
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
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
    assert "quotaflow/quotas/tiers.py" in names
    assert not any(n.startswith("tier_tables/") for n in names)


def test_installed_wheel_loads_its_own_tables(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel: unpacking installs it
    script = textwrap.dedent(
        """
        import quotaflow.quotas.tiers as tiers
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


def test_the_wheel_is_pure_python_and_installs_anywhere(wheel: Path) -> None:
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c"))], names
    (meta,) = [n for n in names if n.endswith(".dist-info/WHEEL")]
    tags = archive.read(meta).decode()
    assert "Root-Is-Purelib: true" in tags
    assert [line for line in tags.splitlines() if line.startswith("Tag:")] == ["Tag: py3-none-any"]
