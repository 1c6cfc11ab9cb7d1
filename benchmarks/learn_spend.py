"""A spend cap that binds before RPM and TPM: the real google-genai SDK through
:func:`quotaflow.transports.genai_http_options` against the emulator, both capping spend per
rolling window at the same figure.

The emulator bills ``gemini-2.5-flash`` at the shipped prices and answers 429 (a spend quotaId)
when a project's spend in the rolling window would pass the cap. Its RPM and TPM are set far
above what the cap allows, so spend is the binding limit. ``--tasks`` coroutines call
``generate_content`` in a loop (prompts of mixed sizes, ``maxOutputTokens`` set, so quotaflow
reserves input plus ``maxOutputTokens`` at the model's price and settles from
``usageMetadata``). Time is compressed: a minute lasts ``minute_seconds``; the spend window is
ten of them (Gemini: 600 s).

Scored: the spend 429s the server sent (target 0), failed calls, and the share of the cap used
in each whole window after the first (what the emulator charged in it over the cap; target at
least 95%).

Run: ``python benchmarks/learn_spend.py`` (``--help`` for the knobs); the figures go to
``benchmarks/results/learn_spend.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any

import anyio

MODEL = "gemini-2.5-flash"
KEY = "bench-key"
RESULTS = Path(__file__).resolve().parent / "results" / "learn_spend.json"


async def run_spend(
    minute_seconds: float = 2.0,
    seconds: float | None = None,
    *,
    cap_usd: float = 0.02,
    tasks: int = 16,
    max_output: int = 64,
    seed: int = 1,
) -> dict[str, Any]:
    """Run the scenario; returns its figures.

    Args:
        minute_seconds: how long a "minute" lasts; the spend window is 10 of them.
        seconds: how long to run (default: four spend windows).
        cap_usd: the spend cap per window, at the emulator and the limiter alike.
        tasks: concurrent callers.
        max_output: ``maxOutputTokens`` of every call.
        seed: the prompt sizes' random seed.
    """
    from google import genai
    from google.genai import errors, types

    from quotaflow import RPD, RPM, TPM, Limiter
    from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
    from quotaflow.quotas.pricing import Spend, load_prices

    window = 10 * minute_seconds
    seconds = 4 * window if seconds is None else seconds
    price = load_prices().price(MODEL)
    assert price is not None
    config = EmulatorConfig(
        keys=[{"key": KEY, "project": "bench"}],  # type: ignore[list-item]
        minute_seconds=minute_seconds,
        spend_cap_usd=cap_usd,  # over ten minutes: 10 x minute_seconds
        models=[
            ModelConfig(
                name=MODEL,
                rpm=100_000,
                tpm=100_000_000,
                rpd=10_000_000,
                input_price=price.input,
                output_price=price.output,
            )
        ],
    )
    quota = [RPM(100_000, minute_seconds), TPM(100_000_000, minute_seconds), RPD(10_000_000)]
    limiter = Limiter(
        tier=None,
        quotas={MODEL: quota},
        project="bench",
        minute_seconds=minute_seconds,
        spend=Spend(cap_usd=cap_usd),  # its window: ten of the limiter's minutes
    )
    assert limiter.spend is not None and limiter.spend.period == window
    rng = random.Random(seed)
    calls = failed = 0
    with serve(config) as served:
        options = genai_options(limiter, served.base_url)
        client = genai.Client(api_key=KEY, http_options=options)
        gen_config = types.GenerateContentConfig(max_output_tokens=max_output)
        start = anyio.current_time()

        async def worker() -> None:
            nonlocal calls, failed
            while anyio.current_time() - start < seconds:
                words = rng.choice((40, 40, 40, 400))
                try:
                    await client.aio.models.generate_content(
                        model=MODEL, contents="spend " * words, config=gen_config
                    )
                    calls += 1
                except errors.APIError:
                    failed += 1

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(worker)
        finally:
            await client.aio.aclose()
        stats = served.emulator.stats(include_log=True)
    spend = stats["spend"].get("bench", {})
    log = spend.get("log", [])
    cap = round(cap_usd * 1_000_000)
    use: list[float] = []
    if log:
        t0 = log[0][0]
        for k in range(1, int((log[-1][0] - t0) // window)):
            lo, hi = t0 + k * window, t0 + (k + 1) * window
            use.append(sum(c for t, c in log if lo <= t < hi) / cap)
    rejected = stats["models"].get(MODEL, {}).get("rejected_by_dimension", {})
    return {
        "scenario": "spend cap binding before RPM/TPM",
        "minute_seconds": minute_seconds,
        "window_seconds": window,
        "seconds": seconds,
        "tasks": tasks,
        "cap_usd": cap_usd,
        "calls": calls,
        "failed_calls": failed,
        "spend_429s": int(rejected.get("spend", 0)),
        "other_429s": int(sum(v for k, v in rejected.items() if k != "spend")),
        "spent_micros": spend.get("spent_micros", 0),
        "max_window_micros": spend.get("max_window_micros", 0),
        "cap_use_per_window": [round(u, 4) for u in use],
        "min_cap_use": round(min(use), 4) if use else None,
        "targets": {"spend_429s": 0, "min_cap_use": 0.95},
    }


def genai_options(limiter: Any, base_url: str) -> Any:
    """google-genai's ``HttpOptions`` through quotaflow's transports."""
    from quotaflow.transports import genai_http_options

    return genai_http_options(limiter, base_url=base_url, api_version="v1beta")


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("quotaflow", "google-genai", "httpx")},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scenario and write ``benchmarks/results/learn_spend.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minute-seconds", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--cap-usd", type=float, default=0.02)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args(argv)
    result = anyio.run(
        lambda: run_spend(args.minute_seconds, args.seconds, cap_usd=args.cap_usd, tasks=args.tasks)
    )
    result["machine"] = _machine()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    ok = result["spend_429s"] == 0 and (result["min_cap_use"] or 0) >= 0.95
    return 0 if ok and result["failed_calls"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
