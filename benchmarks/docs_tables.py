"""Write the tables of the benchmarks' results files into docs/benchmarks.md.

Each results file (``benchmarks/results/<name>.json``) holds its ``date``, ``machine`` and a
markdown ``table``; the PNG plots beside it (``<name>-*.png``, by ``benchmarks/plots.py``)
are shown under the table. In the docs, ``<!-- results:<name> -->`` ... ``<!-- /results -->`` marks
where a table goes; this script replaces what is between the markers. ``--check`` exits 1 if
the docs differ from the results files (for CI). README.md's ``<!-- table:<name> -->`` ...
``<!-- /table -->`` block gets only the first table of a results file, with its date.

Run: ``python benchmarks/docs_tables.py`` after a benchmark wrote its results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def render(text: str) -> str:
    """``text`` with every marked block filled from its results file."""

    def fill(m: re.Match[str]) -> str:
        data = json.loads((RESULTS / f"{m.group(2)}.json").read_text(encoding="utf-8"))
        machine = data.get("machine", {})
        where = ", ".join(str(machine[k]) for k in ("platform", "cpus", "python") if k in machine)
        body = f"{data['table'].rstrip()}\n\n*From `{data['benchmark']}`, {data['date']}"
        body += f" ({where}).*\n" if where else ".*\n"
        for png in sorted(RESULTS.glob(f"{m.group(2)}-*.png")):  # benchmarks/plots.py's
            what = png.stem[len(m.group(2)) + 1 :].replace("_", " ")
            body += f"\n![{m.group(2)}: {what}](../benchmarks/results/{png.name})\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


SHORT = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def render_short(text: str) -> str:
    """``text`` with every short block filled: the first markdown table of its results file."""

    def fill(m: re.Match[str]) -> str:
        data = json.loads((RESULTS / f"{m.group(2)}.json").read_text(encoding="utf-8"))
        rows = [ln for ln in data["table"].splitlines() if ln.startswith("|")]
        first: list[str] = []
        for line in data["table"].splitlines():
            if line.startswith("|"):
                first.append(line)
            elif first:
                break
        rows = first or rows
        date = str(data["date"])[:10]
        body = "\n".join(rows) + f"\n\n*From `{data['benchmark']}`, {date}.*\n"
        return m.group(1) + body + m.group(4)

    return SHORT.sub(fill, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the docs are stale")
    args = ap.parse_args()
    stale = []
    for path, fn in ((DOC, render), (README, render_short)):
        text = path.read_text(encoding="utf-8")
        new = fn(text)
        if new == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT).as_posix())
        else:
            path.write_text(new, encoding="utf-8")
    if stale:
        print(f"{', '.join(stale)}: stale; run python benchmarks/docs_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
