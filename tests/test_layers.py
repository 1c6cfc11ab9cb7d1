"""The package's shape: the core knows nothing of the layers above it, each module is one job
of a readable size, and no class name means two things."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "quotaflow"

CORE = ["quotas", "scheduler", "backends", "limiter.py", "sync.py", "permit.py"]
ABOVE_CORE = ("quotaflow.flow", "quotaflow.transports", "quotaflow.agents", "quotaflow.gateway")
ABOVE_FLOW = ("quotaflow.transports", "quotaflow.agents", "quotaflow.gateway")
MAX_LINES = 420  # "about 400"


def _modules(*roots: str) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        path = PKG / root
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        bad = sorted(n for n in _imports(path) if n.startswith(forbidden))
        if bad:
            found[str(path.relative_to(PKG))] = bad
    return found


def test_the_core_imports_nothing_from_the_layers_above_it() -> None:
    assert _offending(_modules(*CORE), ABOVE_CORE) == {}


def test_the_call_flow_knows_the_policy_only_as_its_protocol() -> None:
    assert _offending(_modules("flow"), ABOVE_FLOW) == {}


def test_every_module_is_of_a_readable_size() -> None:
    long = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_class_name_is_defined_twice() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(PKG)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
