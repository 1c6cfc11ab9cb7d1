"""The README's Python examples: every one compiles, and the self-contained ones run."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _compile(source: str) -> CodeType:
    return compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _block(first_line: str) -> str:
    return next(b for b in BLOCKS if b.startswith(first_line))


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_every_example_compiles(number: int) -> None:
    _compile(BLOCKS[number])


def test_the_readme_stays_a_page_and_its_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).is_file(), target


async def _run(source: str) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    result = eval(_compile(source), scope)
    if inspect.iscoroutine(result):  # top-level await
        await result
    return scope


def test_the_quickstart_runs() -> None:
    scope: dict[str, Any] = {}
    exec(_compile(_block("import anyio\nimport quotaflow\n")), scope)
    from quotaflow import SyncLimiter

    status = SyncLimiter.sharing(scope["limiter"]).status("gemini-2.5-flash")
    assert (status["rpm"].used, status["tpm"].used, status["tpm"].in_flight) == (1, 123, 0)


@pytest.mark.anyio
async def test_the_tour_of_the_limiter_runs() -> None:
    scope = await _run(_block("import quotaflow\nfrom quotaflow import Limiter, SyncLimiter"))
    status = scope["status"]
    assert (status["rpm"].used, status["rpm"].in_flight) == (1, 0)  # one settled, one released
    assert status["tpm"].used == 7_950
    mine = await scope["mine"].status("my-model")
    assert mine["ipm"].used == 2


def test_the_emulator_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("google.genai")
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    exec(
        _compile(_block("from google import genai\nfrom google.genai import types\nfrom openai")),
        {},
    )
    assert "Echo: hi" in capsys.readouterr().out
