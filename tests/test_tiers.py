"""Tests for the tier tables (data) and their loader, quotaflow.quotas.tiers."""

from __future__ import annotations

import ast
import datetime as dt
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaflow.errors import ConfigError, QuotaflowError, TierTableError, UnknownModelError
from quotaflow.quotas import tiers
from quotaflow.quotas.tiers import (
    DIMENSIONS,
    ENV_VAR,
    SHIPPED_TIERS,
    ModelLimits,
    TierTable,
    load_table,
    load_tier,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

REPO = Path(__file__).resolve().parent.parent
TABLES = REPO / "tier_tables"

REQUIRED = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-embedding-001",
)
PAID_ONLY = ("gemini-3-pro-preview", "gemini-3-flash-preview")


@pytest.fixture
def tier1() -> TierTable:
    return load_tier("tier1")


def write(tmp_path: Path, text: str, name: str = "table.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped data -----------------------------------------------------------------------


@pytest.mark.parametrize("tier", SHIPPED_TIERS)
def test_every_shipped_tier_loads(tier: str) -> None:
    table = load_tier(tier)
    assert table.tier == tier
    assert table.schema_version == 1
    required = REQUIRED if tier == "free" else REQUIRED + PAID_ONLY
    assert set(required) <= set(table.models)


def test_every_file_in_tier_tables_is_a_shipped_tier() -> None:
    assert sorted(p.stem for p in TABLES.glob("*.toml")) == sorted(SHIPPED_TIERS)


@pytest.mark.parametrize("tier", SHIPPED_TIERS)
def test_every_figure_cites_a_source_with_url_and_read_date(tier: str) -> None:
    # Read the raw TOML, independently of the loader's own provenance check.
    raw = tomllib.loads((TABLES / f"{tier}.toml").read_text(encoding="utf-8"))
    assert raw["schema"] == 1
    assert raw["tier"] == tier
    sources = raw["sources"]
    figures = 0
    for name, entry in raw["models"].items():
        for dim in DIMENSIONS:
            if dim not in entry:
                continue
            figures += 1
            sid = entry.get("sources", {}).get(dim, entry.get("source"))
            assert sid in sources, f"{tier}: {name}.{dim} cites no known source"
            assert sources[sid]["url"].startswith("https://"), sid
            assert isinstance(sources[sid]["read"], dt.date), sid
            assert entry[dim] > 0
    assert figures > 10


@pytest.mark.parametrize("tier", SHIPPED_TIERS)
def test_header_says_google_stopped_publishing(tier: str) -> None:
    text = (TABLES / f"{tier}.toml").read_text(encoding="utf-8")
    header = text.split("schema = 1")[0]
    assert "stopped publishing" in header
    assert "https://aistudio.google.com/rate-limit" in header
    assert "per Google Cloud project and model" in header


@pytest.mark.parametrize(
    ("tier", "model", "expected"),
    [
        ("free", "gemini-2.5-pro", {"rpm": 2, "tpm": 125_000, "rpd": 50, "tpd": 6_000_000}),
        ("free", "gemini-2.5-flash", {"rpm": 10, "tpm": 250_000, "rpd": 250}),
        ("free", "gemini-embedding-001", {"rpm": 100, "tpm": 30_000, "rpd": 1_000}),
        (
            "tier1",
            "gemini-2.5-flash",
            {"rpm": 1_000, "tpm": 1_000_000, "rpd": 10_000, "batch_enqueued_tokens": 3_000_000},
        ),
        (
            "tier1",
            "gemini-3-pro-preview",
            {"rpm": 50, "tpm": 1_000_000, "rpd": 1_000, "batch_enqueued_tokens": 50_000_000},
        ),
        ("tier1", "gemini-3-flash-preview", {"batch_enqueued_tokens": 3_000_000}),
        (
            "tier2",
            "gemini-2.0-flash-lite",
            {"rpm": 20_000, "tpm": 10_000_000, "batch_enqueued_tokens": 1_000_000_000},
        ),
        (
            "tier3",
            "gemini-2.0-flash",
            {"rpm": 30_000, "tpm": 30_000_000, "batch_enqueued_tokens": 5_000_000_000},
        ),
        (
            "tier3",
            "gemini-embedding-001",
            {"rpm": 10_000, "tpm": 10_000_000, "batch_enqueued_tokens": 10_000_000},
        ),
    ],
)
def test_figures_match_the_published_tables(
    tier: str, model: str, expected: dict[str, int]
) -> None:
    assert load_tier(tier).models[model].figures == expected


def test_unpublished_dimension_is_absent_not_zero() -> None:
    limits = load_tier("tier3").models["gemini-2.5-pro"]
    assert limits.rpd is None
    assert "rpd" not in limits.figures


def test_free_tier_has_no_batch_and_no_gemini_3_pro() -> None:
    free = load_tier("free")
    assert all(m.batch_enqueued_tokens is None for m in free.models.values())
    assert "gemini-3-pro-preview" not in free.models


def test_embedding_model_kind() -> None:
    for tier in SHIPPED_TIERS:
        assert load_tier(tier).models["gemini-embedding-001"].kind == "embed"
        assert load_tier(tier).models["gemini-2.5-flash"].kind == "generate"


def test_source_of_prefers_the_per_figure_source(tier1: TierTable) -> None:
    flash = tier1.models["gemini-2.5-flash"]
    assert flash.source_of("rpm") == "rate_limits_2025_11"
    assert flash.source_of("batch_enqueued_tokens") == "rate_limits_2026_08"
    assert tier1.sources["rate_limits_2026_08"].read == dt.date(2026, 8, 24)


# -- load_tier / load_table ---------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["tier1", "Tier 1", "TIER-1", "tier_1", "1", " tier1 "])
def test_load_tier_accepts_spellings(spelling: str) -> None:
    assert load_tier(spelling) is load_tier("tier1")


def test_load_tier_unknown_lists_valid_tiers() -> None:
    with pytest.raises(ConfigError, match=r"free, tier1, tier2, tier3") as info:
        load_tier("tier4")
    assert isinstance(info.value, ValueError)


def test_load_table_reads_a_shipped_file_too() -> None:
    table = load_table(TABLES / "tier2.toml", require_sources=True)
    assert table == load_tier("tier2")


def test_load_table_minimal_user_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        schema = 1
        tier = "mine"
        [models."gemini-2.5-flash"]
        rpm = 5
        tpm = 1_000
        """,
    )
    table = load_table(str(path))
    assert table.resolve("gemini-2.5-flash")[1].figures == {"rpm": 5, "tpm": 1000}


GOOD_HEAD = """
schema = 1
tier = "mine"
[sources.s]
url = "https://example.com/limits"
read = 2026-11-28
"""

BROKEN = {
    "wrong type": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = "1000"\nsource = "s"\n',
        'models."gemini-2.5-flash".rpm',
        "positive integer, got '1000'",
    ),
    "float": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\ntpm = 1.5\nsource = "s"\n',
        'models."gemini-2.5-flash".tpm',
        "positive integer",
    ),
    "negative": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = -5\nsource = "s"\n',
        'models."gemini-2.5-flash".rpm',
        "positive integer, got -5",
    ),
    "zero": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpd = 0\nsource = "s"\n',
        'models."gemini-2.5-flash".rpd',
        "positive integer, got 0",
    ),
    "unknown model key": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpmm = 5\nsource = "s"\n',
        'models."gemini-2.5-flash".rpmm',
        "unknown key; allowed keys: kind, rpm, tpm",
    ),
    "unknown top-level key": (
        "limits = 3\n" + GOOD_HEAD,
        "limits",
        "unknown key; allowed keys: schema, tier",
    ),
    "unknown source key": (
        GOOD_HEAD.replace("read =", 'date = "x"\nread ='),
        "sources.s.date",
        "unknown key; allowed keys: url, read",
    ),
    "missing source": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = 5\n',
        'models."gemini-2.5-flash".rpm',
        "has no source",
    ),
    "source without url": (
        GOOD_HEAD.replace('url = "https://example.com/limits"', "")
        + '[models."gemini-2.5-flash"]\nrpm = 5\nsource = "s"\n',
        "sources.s.url",
        "missing",
    ),
    "dangling source id": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = 5\nsource = "nope"\n',
        'models."gemini-2.5-flash".source',
        "unknown source id 'nope'; define [sources.nope] or use one of: s",
    ),
    "per-figure source for an absent figure": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = 5\nsource = "s"\nsources = { tpm = "s" }\n',
        'models."gemini-2.5-flash".sources.tpm',
        "tpm is not set",
    ),
    "bad url": (
        GOOD_HEAD.replace("https://example.com/limits", "example.com"),
        "sources.s.url",
        "pattern",
    ),
    "bad kind": (
        GOOD_HEAD + '[models."gemini-2.5-flash"]\nkind = "chat"\n',
        'models."gemini-2.5-flash".kind',
        "'generate' or 'embed'",
    ),
    "models/ prefix": (
        GOOD_HEAD + '[models."models/gemini-2.5-flash"]\nkind = "generate"\n',
        'models."models/gemini-2.5-flash"',
        "without the 'models/' prefix",
    ),
    "alias collides": (
        GOOD_HEAD
        + '[models."gemini-2.5-flash"]\n[models."gemini-2.5-pro"]\n'
        + 'aliases = ["Gemini-2.5-Flash"]\n',
        'models."gemini-2.5-pro".aliases[0]',
        "already names model 'gemini-2.5-flash'",
    ),
    "tuned_models names no model": (
        'tuned_models = "gemini-9"\n' + GOOD_HEAD,
        "tuned_models",
        "not a model of this table",
    ),
    "missing schema": ('tier = "mine"\n', "schema", "put `schema = 1` at the top"),
    "future schema": (
        GOOD_HEAD.replace("schema = 1", "schema = 2"),
        "schema",
        "unsupported schema version 2",
    ),
    "missing tier": ("schema = 1\n", "tier", "missing"),
    "invalid TOML": (GOOD_HEAD + "[models.\n", "", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_names_file_key_and_problem(tmp_path: Path, case: str) -> None:
    text, key, problem = BROKEN[case]
    path = write(tmp_path, text, "broken.toml")
    with pytest.raises(TierTableError) as info:
        load_table(path, require_sources=True)
    err = info.value
    assert isinstance(err, ConfigError)
    assert isinstance(err, ValueError)
    assert isinstance(err, QuotaflowError)
    assert err.path == str(path)
    assert err.key == key
    assert str(path) in str(err)
    assert key in str(err)
    assert problem in str(err)


def test_user_file_need_not_cite_sources_unless_asked(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD + '[models."gemini-2.5-flash"]\nrpm = 5\n')
    assert load_table(path).models["gemini-2.5-flash"].rpm == 5
    with pytest.raises(TierTableError, match="has no source"):
        load_table(path, require_sources=True)


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD + '[models."a"]\nrpm = -1\ntpm = "x"\n')
    with pytest.raises(TierTableError) as info:
        load_table(path)
    assert "models.a.rpm: must be a positive integer, got -1 (and 1 more: models.a.tpm" in str(
        info.value
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TierTableError, match="cannot read") as info:
        load_table(tmp_path / "nope.toml")
    assert info.value.path == str(tmp_path / "nope.toml")


def test_tables_are_immutable(tier1: TierTable) -> None:
    with pytest.raises(ValueError, match="frozen"):
        tier1.tier = "tier2"  # type: ignore[misc]


# -- name resolution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "resolved"),
    [
        ("gemini-2.5-flash", "gemini-2.5-flash"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("  Models/Gemini-2.5-Flash ", "gemini-2.5-flash"),
        ("gemini-2.5-flash-latest", "gemini-2.5-flash"),
        ("gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),  # an explicit alias
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),  # -preview-MM-DD
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
        ("gemini-2.5-pro-preview-03-2025", "gemini-2.5-pro"),  # -preview-MM-YYYY
        ("gemini-2.5-pro-exp-03-25", "gemini-2.5-pro"),  # -exp-MM-DD
        ("gemini-2.0-flash-exp-0827", "gemini-2.0-flash"),  # -exp-MMDD
        ("gemini-2.0-flash-exp", "gemini-2.0-flash"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),  # version suffix
        ("gemini-2.0-flash-lite-001", "gemini-2.0-flash-lite"),
        ("gemini-2.0-flash-001-latest", "gemini-2.0-flash"),  # stripped repeatedly
        ("gemini-embedding-001", "gemini-embedding-001"),  # exact wins over stripping
        ("gemini-3-pro", "gemini-3-pro-preview"),  # quota name in 429 bodies
        ("gemini-3-pro-preview-11-2025", "gemini-3-pro-preview"),
        ("gemini-3.1-flash-lite-preview", "gemini-3.1-flash-lite"),
    ],
)
def test_resolve(tier1: TierTable, name: str, resolved: str) -> None:
    got, limits = tier1.resolve(name)
    assert got == resolved
    assert limits is tier1.models[resolved]


@pytest.mark.parametrize(
    "name",
    [
        "gemini-2.5-flash-preview-tts",  # a different model: never stripped from the middle
        "gemini-2.5-flash-image-preview",
        "gemini-2.0-flash-thinking-exp-01-21",
        "gemini-flash-latest",  # moving alias: not mapped
        "gemini-exp-1206",
        "tunedModels/my-model-abc",
    ],
)
def test_resolve_does_not_guess(tier1: TierTable, name: str) -> None:
    with pytest.raises(UnknownModelError):
        tier1.resolve(name)


def test_unknown_model_suggests_close_matches(tier1: TierTable) -> None:
    with pytest.raises(UnknownModelError) as info:
        tier1.resolve("models/gemini-2.5-flsh")
    err = info.value
    assert isinstance(err, LookupError)
    assert isinstance(err, QuotaflowError)
    assert err.model == "models/gemini-2.5-flsh"
    assert err.suggestions[0] == "gemini-2.5-flash"
    assert "gemini-2.5-flash" in str(err)


def test_unknown_model_far_from_everything_has_no_suggestions(tier1: TierTable) -> None:
    with pytest.raises(UnknownModelError) as info:
        tier1.resolve("llama-3")
    assert info.value.suggestions == []


def test_unknown_fallback_with_unknown(tier1: TierTable) -> None:
    table = tier1.with_unknown(ModelLimits(rpm=10, tpm=100_000))
    name, limits = table.resolve("models/Some-New-Model")
    assert (name, limits.rpm, limits.tpm) == ("some-new-model", 10, 100_000)
    assert table.resolve("gemini-2.5-flash")[1].rpm == 1_000  # known names still win
    assert table.with_unknown(None).unknown is None
    assert tier1.with_unknown({"rpd": 3}).resolve("x")[1].rpd == 3
    with pytest.raises(TierTableError, match=r"with_unknown\(\): rpm: must be a positive"):
        tier1.with_unknown({"rpm": 0})


def test_unknown_section_in_a_user_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'schema = 1\ntier = "mine"\n[unknown]\nrpm = 7\n')
    assert load_table(path).resolve("gemini-9-ultra") == ("gemini-9-ultra", ModelLimits(rpm=7))


def test_tuned_models_by_wildcard_entry_exact_entry_or_base(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        schema = 1
        tier = "mine"
        tuned_models = "gemini-2.0-flash"
        [models."gemini-2.0-flash"]
        rpm = 100
        [models."tunedModels/special"]
        rpm = 3
        """,
    )
    table = load_table(path)
    # no wildcard: the base named by tuned_models; the tuned model keeps its own name
    assert table.resolve("tunedModels/my-model-abc") == (
        "tunedModels/my-model-abc",
        ModelLimits(rpm=100),
    )
    assert table.resolve("models/tunedModels/my-model-abc")[0] == "tunedModels/my-model-abc"
    assert table.resolve("tunedModels/special") == ("tunedModels/special", ModelLimits(rpm=3))
    wild = table.with_overrides({"tunedModels/*": {"rpm": 9}})
    assert wild.resolve("tunedModels/other") == (
        "tunedModels/other",
        ModelLimits(rpm=9, sources={"rpm": "override"}),
    )


def test_resolve_is_cached_and_consistent(tier1: TierTable) -> None:
    first = tier1.resolve("models/gemini-2.5-pro-preview-05-06")
    assert tier1.resolve("models/gemini-2.5-pro-preview-05-06") is first


SUFFIXES = st.one_of(
    st.just("-latest"),
    st.just("-exp"),
    st.just("-preview"),
    st.builds("-preview-{:02d}-{:02d}".format, st.integers(1, 12), st.integers(1, 31)),
    st.builds("-preview-{:02d}-{}".format, st.integers(1, 12), st.integers(2024, 2030)),
    st.builds("-exp-{:02d}{:02d}".format, st.integers(1, 12), st.integers(1, 31)),
    st.builds("-{:03d}".format, st.integers(1, 999)),
)
BASES = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash"]


@given(base=st.sampled_from(BASES), suffixes=st.lists(SUFFIXES, max_size=3), models=st.booleans())
def test_any_suffixed_name_resolves_to_its_base(
    base: str, suffixes: list[str], models: bool
) -> None:
    name = ("models/" if models else "") + base + "".join(suffixes)
    assert load_tier("tier2").resolve(name)[0] == base


# -- overrides ------------------------------------------------------------------------------


def test_overrides_from_a_dict(tier1: TierTable) -> None:
    table = tier1.with_overrides({"gemini-2.5-flash": {"rpm": 5, "tpm": 1000}})
    limits = table.resolve("gemini-2.5-flash")[1]
    assert (limits.rpm, limits.tpm, limits.rpd) == (5, 1000, 10_000)
    assert limits.source_of("rpm") == "override"
    assert limits.source_of("rpd") == "rate_limits_2025_11"
    assert "with_overrides()" in (table.sources["override"].note or "")
    assert tier1.models["gemini-2.5-flash"].rpm == 1_000  # the original is untouched


def test_override_by_alias_or_prefixed_name_changes_the_entry(tier1: TierTable) -> None:
    for name in ("models/gemini-2.5-flash", "gemini-2.5-flash-preview-09-2025", "GEMINI-2.5-FLASH"):
        table = tier1.with_overrides({name: {"rpm": 5}})
        assert table.models["gemini-2.5-flash"].rpm == 5
        assert set(table.models) == set(tier1.models)


def test_override_adds_a_model(tier1: TierTable) -> None:
    table = tier1.with_overrides({"gemini-9-ultra": {"rpm": 1, "kind": "generate"}})
    assert table.resolve("models/gemini-9-ultra") == (
        "gemini-9-ultra",
        ModelLimits(rpm=1, sources={"rpm": "override"}),
    )


def test_override_of_an_unlisted_preview_starts_from_its_base(tier1: TierTable) -> None:
    table = tier1.with_overrides({"gemini-2.5-flash-preview-05-20": {"rpm": 7}})
    preview = table.resolve("gemini-2.5-flash-preview-05-20")
    assert preview[0] == "gemini-2.5-flash-preview-05-20"
    assert (preview[1].rpm, preview[1].tpm, preview[1].aliases) == (7, 1_000_000, ())
    assert table.resolve("gemini-2.5-flash")[1].rpm == 1_000


def test_override_resets_kind_aliases_and_note_with_none(tier1: TierTable) -> None:
    table = tier1.with_overrides(
        {
            "gemini-embedding-001": {"kind": None},
            "gemini-2.5-flash": {"aliases": None, "note": None},
        }
    )
    assert table.models["gemini-embedding-001"].kind == "generate"
    assert table.models["gemini-2.5-flash"].aliases == ()
    assert table.models["gemini-2.5-flash"].note is None


def test_override_removes_a_limit_with_none(tier1: TierTable) -> None:
    table = tier1.with_overrides({"gemini-2.5-pro": {"rpd": None, "tpm": "none"}})
    limits = table.models["gemini-2.5-pro"]
    assert (limits.rpd, limits.tpm, limits.rpm) == (None, None, 150)
    assert "override" not in table.sources  # nothing cites it


def test_override_can_cite_a_source_and_add_aliases(tier1: TierTable) -> None:
    table = tier1.with_overrides(
        {
            "gemini-2.5-flash": {
                "rpm": 4,
                "source": "rate_limits_2026_08",
                "aliases": ["gemini-flash-latest"],
            }
        }
    )
    assert table.resolve("gemini-flash-latest")[0] == "gemini-2.5-flash"
    assert table.models["gemini-2.5-flash"].source_of("rpm") == "rate_limits_2026_08"
    assert "override" not in table.sources


@pytest.mark.parametrize(
    ("override", "key", "problem"),
    [
        ({"gemini-2.5-flash": {"rpm": -1}}, '"gemini-2.5-flash".rpm', "positive integer, got -1"),
        ({"gemini-2.5-flash": {"rpm": "5"}}, '"gemini-2.5-flash".rpm', "positive integer"),
        ({"gemini-2.5-flash": {"rpn": 5}}, '"gemini-2.5-flash".rpn', "unknown key; allowed keys"),
        (
            {"gemini-2.5-flash": {"source": "nope"}},
            '"gemini-2.5-flash".source',
            "unknown source id",
        ),
        (
            {"gemini-2.5-pro": {"aliases": ["gemini-2.5-flash"]}},
            'models."gemini-2.5-pro".aliases[0]',
            "already names",
        ),
    ],
)
def test_dict_override_errors(
    tier1: TierTable, override: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(TierTableError) as info:
        tier1.with_overrides(override)
    assert info.value.key == key
    assert info.value.path == "with_overrides()"
    assert problem in str(info.value)


def test_overrides_from_a_file(tmp_path: Path, tier1: TierTable) -> None:
    path = write(
        tmp_path,
        """
        [sources.aistudio]
        url = "https://aistudio.google.com/rate-limit"
        read = 2026-11-28

        [models."gemini-2.5-flash"]
        rpm = 5
        tpm = 1000
        source = "aistudio"

        [models."gemini-2.5-pro"]
        rpd = 10

        [unknown]
        rpm = 1
        """,
        "overrides.toml",
    )
    table = tier1.with_overrides_file(path)
    flash = table.models["gemini-2.5-flash"]
    assert (flash.rpm, flash.tpm, flash.source_of("rpm")) == (5, 1000, "aistudio")
    assert table.models["gemini-2.5-pro"].rpd == 10
    assert table.models["gemini-2.5-pro"].source_of("rpd") == "file:overrides.toml"
    assert table.resolve("brand-new")[1].rpm == 1
    assert table.sources["aistudio"].read == dt.date(2026, 11, 28)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            '[models."gemini-2.5-flash"]\nrpm = -2\n',
            'models."gemini-2.5-flash".rpm',
            "positive integer",
        ),
        (
            '[models."gemini-2.5-flash"]\nrpn = 2\n',
            'models."gemini-2.5-flash".rpn',
            "allowed keys: kind, rpm",
        ),
        ("[model]\n", "model", "unknown key; allowed keys: schema, tier"),
        (
            '[models."gemini-2.5-flash"]\nrpm = 2\nsource = "nope"\n',
            'models."gemini-2.5-flash".source',
            "unknown source id 'nope'",
        ),
        ("[unknown]\nrpm = 2\nsource = 5\n", "unknown.source", "valid string"),
        ("[models.\n", "", "not valid TOML"),
    ],
)
def test_override_file_errors(
    tmp_path: Path, tier1: TierTable, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text, "over.toml")
    with pytest.raises(TierTableError) as info:
        tier1.with_overrides_file(path)
    assert (info.value.path, info.value.key) == (str(path), key)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_env_overrides_spec_form(tier1: TierTable) -> None:
    env = {ENV_VAR: " gemini-2.5-flash: rpm=5, tpm=1_000 ; gemini-2.5-pro:rpd=10; "}
    table = tier1.with_env_overrides(env)
    assert (table.models["gemini-2.5-flash"].rpm, table.models["gemini-2.5-flash"].tpm) == (5, 1000)
    assert table.models["gemini-2.5-pro"].rpd == 10
    assert table.models["gemini-2.5-pro"].source_of("rpd") == f"env:{ENV_VAR}"


def test_env_overrides_json_form_and_os_environ(
    tier1: TierTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        ENV_VAR, '{"gemini-2.5-flash": {"rpm": 5}, "new-model": {"kind": "embed", "rpm": 2}}'
    )
    table = tier1.with_env_overrides()
    assert table.models["gemini-2.5-flash"].rpm == 5
    assert table.resolve("new-model")[1].kind == "embed"


def test_env_overrides_unset_or_empty_is_a_no_op(tier1: TierTable) -> None:
    assert tier1.with_env_overrides({}) is tier1
    assert tier1.with_env_overrides({ENV_VAR: "  "}) is tier1


def test_env_overrides_custom_variable(tier1: TierTable) -> None:
    table = tier1.with_env_overrides({"MY_LIMITS": "gemini-2.5-flash:rpm=3"}, var="MY_LIMITS")
    assert table.models["gemini-2.5-flash"].rpm == 3


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        ("gemini-2.5-flash:rpm=five", '"gemini-2.5-flash".rpm', "positive integer, got 'five'"),
        ("gemini-2.5-flash:rpm=-5", '"gemini-2.5-flash".rpm', "positive integer"),
        ("gemini-2.5-flash:rpm=0", '"gemini-2.5-flash".rpm', "positive integer, got 0"),
        ("gemini-2.5-flash:rmp=5", '"gemini-2.5-flash".rmp', "unknown key"),
        ("gemini-2.5-flash", "", "is not MODEL:KEY=VALUE"),
        ("gemini-2.5-flash:rpm", '"gemini-2.5-flash"', "is not KEY=VALUE"),
        ("{not json", "", "not valid JSON"),
        ('{"gemini-2.5-flash": 5}', "", "must map model names to objects"),
    ],
)
def test_env_override_errors_name_the_variable_and_the_fix(
    tier1: TierTable, value: str, key: str, problem: str
) -> None:
    with pytest.raises(TierTableError) as info:
        tier1.with_env_overrides({ENV_VAR: value})
    message = str(info.value)
    assert info.value.key == key
    assert f"environment variable {ENV_VAR}" in message
    assert problem in message
    assert "gemini-2.5-flash:rpm=5,tpm=1000;gemini-2.5-pro:rpd=10" in message  # the fix


# -- where the shipped files are found ------------------------------------------------------


def test_editable_lookup_finds_the_top_level_directory() -> None:
    # In a source checkout there is no quotaflow/_tier_tables: the top-level dir is used.
    assert not (REPO / "quotaflow" / "_tier_tables").exists()
    assert Path(str(tiers._shipped_dir())) == TABLES


def test_wheel_lookup_prefers_the_packaged_directory(tmp_path: Path) -> None:
    package = tmp_path / "site" / "quotaflow"
    shutil.copytree(TABLES, package / "_tier_tables")
    assert tiers._find_shipped_dir(package, TABLES) == package / "_tier_tables"
    assert tiers._find_shipped_dir(tmp_path / "elsewhere", TABLES) == TABLES
    with pytest.raises(ConfigError, match="tier tables are missing"):
        tiers._find_shipped_dir(None, tmp_path / "nothing")


def test_load_tier_from_a_wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "quotaflow"
    shutil.copytree(TABLES, package / "_tier_tables")
    text = (package / "_tier_tables" / "tier3.toml").read_text(encoding="utf-8")
    (package / "_tier_tables" / "tier3.toml").write_text(
        text.replace("rpm = 2_000\n", "rpm = 2_001\n", 1), encoding="utf-8"
    )
    monkeypatch.setattr(tiers, "resources", types.SimpleNamespace(files=lambda _: package))
    tiers._load_shipped.cache_clear()
    try:
        table = load_tier("tier3")
        assert table.models["gemini-3-pro-preview"].rpm == 2_001  # read from the wheel layout
    finally:
        tiers._load_shipped.cache_clear()


def test_loader_modules_are_pure() -> None:
    for module in (
        "quotas/tiers.py",
        "quotas/schema.py",
        "quotas/table_io.py",
        "quotas/overrides.py",
        "quotas/keyed.py",
        "quotas/model_names.py",
    ):
        tree = ast.parse((REPO / "quotaflow" / module).read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"anyio", "httpx", "redis", "trio", "asyncio"}, module
