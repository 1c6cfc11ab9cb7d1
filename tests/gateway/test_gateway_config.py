"""The gateway's config and CLI: typed errors naming the key and the fix, never a traceback;
tokens shown once and stored as hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotaflow.cli import main
from quotaflow.gateway import (
    GatewayConfigError,
    TokenFile,
    TokenStore,
    gateway_config_from_dict,
    load_gateway_config,
)

AGENTS = {"agents": {"bot": {"grants": {"content": "write"}}}}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"gateway": {"port": "80"}, **AGENTS}, "gateway.port"),
        ({"gateway": {"port": 70000}, **AGENTS}, "gateway.port"),
        ({"gateway": {"request_timeout": -1}, **AGENTS}, "gateway.request_timeout"),
        ({"gateway": {"upstream": "ftp://x"}, **AGENTS}, "gateway.upstream"),
        ({"gateway": {"colour": "red"}, **AGENTS}, "gateway.colour"),
        ({"gateway": {"access_log": 1}, **AGENTS}, "gateway.access_log"),
        ({"limiter": {"tier": 1}, **AGENTS}, "limiter.tier"),
        ({"servers": {}, **AGENTS}, "servers"),
        ({}, "agents"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(GatewayConfigError) as info:
        gateway_config_from_dict(data)
    assert info.value.key == key
    assert key in str(info.value)


def test_key_from_env_or_file_never_in_errors_or_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = gateway_config_from_dict({"gateway": {"key_env": "QF_TEST_KEY"}, **AGENTS})
    monkeypatch.delenv("QF_TEST_KEY", raising=False)
    with pytest.raises(GatewayConfigError, match="QF_TEST_KEY"):
        cfg.read_key()
    monkeypatch.setenv("QF_TEST_KEY", "AIzaSecretValue")
    assert cfg.read_key() == "AIzaSecretValue"
    (tmp_path / "key").write_text("AIzaFromFile\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nkey_file = "key"\n[agents.bot.grants]\ncontent = "write"\n')
    cfg = load_gateway_config(path)
    assert cfg.read_key() == "AIzaFromFile"
    assert "AIza" not in repr(cfg)


def test_cli_token_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[agents.bot.grants]\ncontent = "write"\n')
    assert main(["gateway", "token", "create", "--config", str(path), "--agent", "bot"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("qfg_")
    stored = (tmp_path / "gateway-tokens.toml").read_text()
    assert token not in stored and "sha256:" in stored
    store = TokenStore(tmp_path / "gateway-tokens.toml")
    entry = store.lookup(token)
    assert entry is not None and entry.agent == "bot"
    assert main(["gateway", "token", "list", "--config", str(path)]) == 0
    listed = capsys.readouterr().out
    assert entry.id in listed and token not in listed
    assert main(["gateway", "token", "revoke", "--config", str(path), entry.id]) == 0
    capsys.readouterr()
    assert store.lookup(token) is None  # the store reloads the changed file
    assert main(["gateway", "token", "revoke", "--config", str(path), entry.id]) == 1
    assert "no token with id" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[agents.bot.grants]\ncontent = "write"\n')
    assert main(["gateway", "token", "create", "--config", str(path), "--agent", "eve"]) == 1
    assert "not in the policy" in capsys.readouterr().err
    assert main(["gateway", "--config", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert "cannot read the gateway config" in err and "Traceback" not in err
    path.write_text("[gateway\n")
    assert main(["gateway", "--config", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().err


def test_scrypt_hashes_verify(tmp_path: Path) -> None:
    from quotaflow.gateway import new_token

    token, entry = new_token("bot", "scrypt")
    assert entry.hash.startswith("scrypt:")
    TokenFile(tmp_path / "t.toml").add(entry)
    store = TokenStore(tmp_path / "t.toml")
    assert store.lookup(token) == entry
    assert store.lookup(token) == entry  # remembered
    assert store.lookup(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_token_changes_take_effect_within_the_recheck_interval(tmp_path: Path) -> None:
    from quotaflow.gateway import new_token

    now = [0.0]
    token, entry = new_token("bot")
    tf = TokenFile(tmp_path / "t.toml")
    tf.add(entry)
    store = TokenStore(tf.path, recheck=1.0, clock=lambda: now[0])
    assert store.lookup(token) == entry
    tf.revoke(entry.id)
    now[0] = 0.5
    assert store.lookup(token) == entry  # not rechecked yet
    now[0] = 1.5
    assert store.lookup(token) is None
    token2, entry2 = new_token("bot")
    tf.add(entry2)
    now[0] = 3.0
    assert store.lookup(token2) == entry2
    tf.path.write_text("[[tokens]]\nid = 1\n")  # a broken file keeps the last good entries
    now[0] = 5.0
    assert store.lookup(token2) == entry2


def test_the_docs_example_config_is_valid() -> None:
    import re
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    text = (Path(__file__).parents[2] / "docs" / "gateway.md").read_text()
    block = re.search(r"```toml\n(# gateway.toml\n.*?)```", text, re.S)
    assert block is not None
    config = gateway_config_from_dict(tomllib.loads(block.group(1)))
    assert set(config.policy.agents) == {"researcher", "indexer"}
    assert config.limiter["tier"] == "tier1"
