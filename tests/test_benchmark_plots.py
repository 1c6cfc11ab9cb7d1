"""The benchmarks' plots: drawn from the results files, and shown in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _plots() -> Any:
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_plot_is_drawn_from_its_results_file(tmp_path: Path) -> None:
    plots = _plots()
    for name in plots.PLOTTERS:
        shutil.copy(RESULTS / f"{name}.json", tmp_path / f"{name}.json")
        written = plots.plot(name, tmp_path)
        assert written, f"no plot for {name}"
        for png in written:
            assert png.parent == tmp_path and png.name.startswith(f"{name}-")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_docs_show_the_plots_beside_each_results_file() -> None:
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    plots = _plots()
    for name in plots.PLOTTERS:
        assert (RESULTS / f"{name}.json").is_file()
        pngs = sorted(RESULTS.glob(f"{name}-*.png"))
        assert pngs, f"benchmarks/results has no plot of {name}: run python benchmarks/plots.py"
        for png in pngs:
            assert f"](../benchmarks/results/{png.name})" in doc
