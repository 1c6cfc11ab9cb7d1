"""Pure parts of the emulator: windows, calendar, sweep, names, tokens, config."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

import quotaflow.emulator as emulator_pkg
from quotaflow.emulator import (
    Emulator,
    EmulatorConfig,
    EmulatorConfigError,
    ModelConfig,
    load_config,
    quota_names,
)
from quotaflow.emulator._errors import format_seconds
from quotaflow.emulator._stats import max_in_window
from quotaflow.emulator._store import paginate, parse_timestamp
from quotaflow.emulator._tokens import count_contents, count_request, count_text, reply_text
from quotaflow.emulator._windows import FixedWindow, RollingWindow, day_bounds, period_bounds

PACIFIC = ZoneInfo("America/Los_Angeles")


def test_public_api_is_sorted() -> None:
    assert emulator_pkg.__all__ == sorted(emulator_pkg.__all__)
    for name in emulator_pkg.__all__:
        assert getattr(emulator_pkg, name).__doc__


def test_rolling_window() -> None:
    w = RollingWindow(10.0)
    w.add(0.0, 3)
    w.add(4.0, 2)
    assert w.wait(5.0, 1, 5) == 5.0  # the 3 leave at 10
    assert w.wait(5.0, 4, 5) == 9.0  # everything gone at 14
    assert w.wait(5.0, 6, 5) is None
    assert w.usage(10.0) == 2
    assert w.wait(10.0, 3, 5) == 0.0


def test_fixed_windows_and_days() -> None:
    w = FixedWindow(period_bounds(60.0))
    w.add(61.0, 5)
    assert w.wait(100.0, 1, 5) == 20.0
    assert w.usage(120.0) == 0
    spring = day_bounds(PACIFIC)(datetime(2026, 3, 8, 12, tzinfo=PACIFIC).timestamp())
    fall = day_bounds(PACIFIC)(datetime(2026, 11, 1, 12, tzinfo=PACIFIC).timestamp())
    assert spring[1] - spring[0] == 23 * 3600
    assert fall[1] - fall[0] == 25 * 3600
    assert datetime.fromtimestamp(fall[1], PACIFIC).hour == 0
    assert day_bounds(PACIFIC, 10.0)(25.0) == (20.0, 30.0)


def _brute(times: list[float], amounts: list[int], period: float) -> int:
    return max(
        (sum(a for s, a in zip(times, amounts, strict=True) if t - period < s <= t) for t in times),
        default=0,
    )


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 50)), min_size=0, max_size=40).map(
        sorted
    ),
    st.sampled_from([1.0, 2.5, 10.0]),
)
def test_max_in_window_matches_brute_force(events: list[tuple[int, int]], period: float) -> None:
    times = [t / 10 for t, _ in events]
    amounts = [a for _, a in events]
    assert max_in_window(times, amounts, period) == _brute(times, amounts, period)


@pytest.mark.parametrize(
    ("seconds", "fmt", "text"),
    [
        (26.5, "whole", "27s"),
        (27.0, "whole", "27s"),
        (0.0, "whole", "0s"),
        (26.5, "fractional", "26.5s"),
        (3.0, "fractional", "3s"),
        (29.0856312, "fractional", "29.085631s"),
    ],
)
def test_format_seconds(seconds: float, fmt: str, text: str) -> None:
    assert format_seconds(seconds, fmt) == text


def test_quota_names() -> None:
    p = "generativelanguage.googleapis.com/"
    assert quota_names("free", "generate", "tpd") == (
        p + "generate_content_free_tier_input_token_count",
        "GenerateContentInputTokensPerModelPerDay-FreeTier",
    )
    assert quota_names("tier1", "generate", "rpd") == (
        p + "generate_requests_per_model_per_day",
        "GenerateRequestsPerDayPerProjectPerModel",
    )
    assert quota_names("tier3", "generate", "tpm")[1] == (
        "GenerateContentPaidTierInputTokensPerModelPerMinute-PaidTier3"
    )
    assert quota_names("tier2", "embed", "rpm")[0] == p + "embed_content_paid_tier_2_requests"


def test_token_counting() -> None:
    assert count_text("") == 0
    assert count_text("abcd") == 1
    assert count_text("abcde") == 2
    assert count_text("é") == 1  # 2 bytes
    assert count_text("✓✓") == 2  # 6 bytes
    contents = [
        {"parts": [{"text": "abcd"}, {"inlineData": {"mimeType": "image/png", "data": ""}}]},
        {"parts": [{"fileData": {"mimeType": "application/pdf", "fileUri": "u"}}]},
        {"parts": [{"fileData": {"mimeType": "audio/wav", "fileUri": "u"}}]},
    ]
    counted = count_contents(contents, 258)
    assert counted.total == 1 + 3 * 258
    assert counted.details() == [
        {"modality": "AUDIO", "tokenCount": 258},
        {"modality": "DOCUMENT", "tokenCount": 258},
        {"modality": "IMAGE", "tokenCount": 258},
        {"modality": "TEXT", "tokenCount": 1},
    ]
    tools = [{"functionDeclarations": [{"name": "f"}]}]
    body = {
        "contents": [{"parts": [{"text": "abcd"}]}],
        "systemInstruction": {"parts": [{"text": "12345678"}]},
        "tools": tools,
    }
    assert count_request(body, 258).total == 1 + 2 + count_text(
        '[{"functionDeclarations":[{"name":"f"}]}]'
    )
    with pytest.raises(ValueError):
        count_contents([{"parts": ["bad"]}], 258)


def test_reply_text_has_the_requested_size() -> None:
    for n in (1, 7, 24, 100):
        text = reply_text("hello ünïcode!", n)
        assert count_text(text) == n
        assert ("Echo: hello n code! " * 30).startswith(text)


def test_paginate_and_timestamps() -> None:
    items = list(range(5))
    page, token = paginate(items, "2", None, 10, 100)
    assert page == [0, 1] and token
    page, token = paginate(items, "2", token, 10, 100)
    assert page == [2, 3]
    page, token = paginate(items, None, token, 10, 100)
    assert page == [4] and token is None
    with pytest.raises(ValueError, match="Invalid page token"):
        paginate(items, None, "garbage!", 10, 100)
    assert parse_timestamp("1970-01-01T00:00:01.123456789Z") == pytest.approx(1.123456789)
    assert parse_timestamp("1970-01-01T01:00:00+01:00") == 0.0


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "emu.toml"
    path.write_text('tier = "free"\nperiod = 1\n[[models]]\nname = "m"\nrpmm = 3\n')
    with pytest.raises(EmulatorConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: unknown key 'period'" in message
    assert f"{path}: unknown key 'models.0.rpmm'" in message


def test_config_files(tmp_path: Path) -> None:
    toml = tmp_path / "emu.toml"
    toml.write_text(
        'tier = "tier2"\nminute_seconds = 1.5\n[[keys]]\nkey = "k"\nproject = "p"\n'
        '[[models]]\nname = "models/gemini-2.5-flash"\nrpm = 3\n[faults]\nseed = 4\n'
    )
    config = load_config(toml)
    assert (config.tier, config.minute_seconds, config.faults.seed) == ("tier2", 1.5, 4)
    assert config.model("gemini-2.5-flash") == ModelConfig(name="gemini-2.5-flash", rpm=3)
    as_json = tmp_path / "emu.json"
    as_json.write_text(json.dumps({"window": "fixed", "day_seconds": 5}))
    assert load_config(as_json).window == "fixed"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(EmulatorConfigError, match="cannot load"):
        load_config(tmp_path / "broken.json")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"models": [{"name": "a"}, {"name": "a"}]}, "duplicate model names: a"),
        ({"keys": [{"key": "k"}, {"key": "k"}]}, "duplicate API key"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"tier": "gold"}, "tier"),
        ({"faults": {"error_rate_500": 0.6, "error_rate_503": 0.6}}, "sum to at most 1"),
        ({"models": [{"name": "a", "kind": "image"}]}, "models.0.kind"),
    ],
)
def test_invalid_configs(data: dict[str, object], match: str) -> None:
    with pytest.raises(EmulatorConfigError, match=match):
        EmulatorConfig.from_mapping(data)


def test_defaults_and_inject_validation() -> None:
    config = EmulatorConfig()
    assert [k.key for k in config.keys] == ["test-key"]
    assert config.model("gemini-embedding-001") is not None
    assert config.model("gemini-2.5-flash") is not None
    emulator = Emulator(config)
    with pytest.raises(ValueError, match="unknown model"):
        emulator.inject("gemini-9")
