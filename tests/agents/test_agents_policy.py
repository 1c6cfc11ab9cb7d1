"""Policies (TOML and Python objects, errors naming file, agent and key) and grant decisions
for every method of the reference (pure, no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotaflow.agents import (
    METHODS,
    AgentPolicy,
    AreaGrant,
    Policy,
    PolicyError,
    decide,
    load_policy,
)
from quotaflow.gemini import classify

README_POLICY = Path(__file__).with_name("policy_example.toml")

# every method of the reference: (HTTP method, path, area, access)
REFERENCE = [
    ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", "content", "write"),
    ("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "content", "write"),
    ("GET", "/v1beta/models", "content", "read"),
    ("GET", "/v1beta/models/gemini-2.5-flash", "content", "read"),
    ("POST", "/v1beta/models/gemini-embedding-001:embedContent", "embeddings", "write"),
    ("POST", "/v1beta/models/gemini-embedding-001:batchEmbedContents", "embeddings", "write"),
    ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", "counting", "read"),
    ("POST", "/upload/v1beta/files", "files", "write"),
    ("GET", "/v1beta/files", "files", "read"),
    ("GET", "/v1beta/files/abc", "files", "read"),
    ("DELETE", "/v1beta/files/abc", "files", "write"),
    ("POST", "/v1beta/cachedContents", "caching", "write"),
    ("GET", "/v1beta/cachedContents", "caching", "read"),
    ("GET", "/v1beta/cachedContents/c1", "caching", "read"),
    ("PATCH", "/v1beta/cachedContents/c1", "caching", "write"),
    ("DELETE", "/v1beta/cachedContents/c1", "caching", "write"),
    ("POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", "batch", "write"),
    ("GET", "/v1beta/batches/b1", "batch", "read"),
    ("GET", "/v1beta/batches", "batch", "read"),
    ("POST", "/v1beta/batches/b1:cancel", "batch", "write"),
    ("DELETE", "/v1beta/batches/b1", "batch", "write"),
    ("POST", "/v1beta/tunedModels", "tuning", "write"),
    ("GET", "/v1beta/tunedModels", "tuning", "read"),
    ("GET", "/v1beta/tunedModels/t1", "tuning", "read"),
    ("POST", "/v1beta/tunedModels/t1:generateContent", "tuning", "write"),
    ("DELETE", "/v1beta/tunedModels/t1", "tuning", "write"),
]


@pytest.mark.parametrize(("method", "path", "area", "access"), REFERENCE)
def test_every_reference_method_by_grant_level(
    method: str, path: str, area: str, access: str
) -> None:
    call = classify(method, path)
    assert (call.area, call.access) == (area, access)
    assert METHODS[area][call.action] == access, "the grant table knows the method"
    for level in ("none", "read", "write"):
        policy = Policy(agents={"a": AgentPolicy(grants={area: AreaGrant(access=level)})})
        d = decide(policy, "a", call)
        expected = level == "write" or (level == "read" and access == "read")
        assert d.allowed is expected, (level, d.message)
        if not expected:
            assert d.reason == ("no_grant" if level == "none" else "read_only")
            assert f"agent 'a' may not call {call.action}" in d.message
            assert f"area {area!r} needs {access!r}" in d.message
            assert f"holds {level!r}" in d.message
        other = next(a for a in METHODS if a != area)
        only_other = Policy(agents={"a": AgentPolicy(grants={other: AreaGrant(access="write")})})
        assert not decide(only_other, "a", call).allowed


def test_deny_by_default_and_the_default_agent() -> None:
    call = classify("GET", "/v1beta/models")
    strict = Policy(agents={"a": AgentPolicy(grants={"content": AreaGrant(access="read")})})
    assert decide(strict, "nobody", call).reason == "unknown_agent"
    assert decide(strict, None, call).reason == "no_agent"
    assert decide(strict, "a", classify("GET", "/v1beta/operations/x")).reason == "unknown_route"
    lenient = Policy.from_dict({"default": {"grants": {"content": "read"}}})
    assert decide(lenient, "nobody", call).allowed
    assert not decide(lenient, "nobody", classify("POST", f"{call.path}/m:generateContent")).allowed


def test_example_policy_loads() -> None:
    policy = load_policy(README_POLICY)
    assert set(policy.agents) == {"researcher", "indexer", "admin"}
    r = policy.agents["researcher"]
    assert r.grant("content").models == ("gemini-2.5-flash*",)
    assert policy.shares()["researcher"].floor == 0.3
    assert policy.budgets()["researcher"][0].name == "rpd"
    gen = classify("POST", "/v1beta/models/gemini-2.5-flash-lite:generateContent")
    assert decide(policy, "researcher", gen).allowed
    assert not decide(policy, "researcher", classify("GET", "/v1beta/models")).allowed
    assert not decide(policy, "indexer", gen).allowed
    assert decide(policy, "admin", classify("DELETE", "/v1beta/files/x")).reason == "not_owner"
    assert decide(policy, "admin", classify("DELETE", "/v1beta/files/x"), owner="admin").allowed


@pytest.mark.parametrize(
    ("toml", "agent", "key", "fragment"),
    [
        ('[agents.r.grants]\nfiles = "admin"\n', "r", "agents.r.grants.files.access", "'write'"),
        ("[agents.r.grants]\nvideos = 'read'\n", "r", "agents.r.grants.videos", "'content'"),
        (
            "[agents.r.grants]\nfiles = { access = 'read', deny = ['remove'] }\n",
            "r",
            "agents.r",
            "'remove' is not a method of files",
        ),
        ("[agents.r]\nshare = { floor = 0.6, ceiling = 0.5 }\n", "r", "agents.r.share", "above"),
        (
            "[agents.r]\nbudget = { requests_per_day = 0 }\n",
            "r",
            "agents.r.budget.requests_per_day",
            "greater",
        ),
        ("[agents.r]\npriority = 'urgent'\n", "r", "agents.r.priority", "not a level"),
        ("[agents.r]\ncolour = 'red'\n", "r", "agents.r.colour", "Extra inputs"),
        ("[agents.'a@b']\n", "", "agents", "without '@'"),
        ("agents = [", "", "", "not valid TOML"),
    ],
)
def test_errors_name_file_agent_and_key(
    tmp_path: Path, toml: str, agent: str, key: str, fragment: str
) -> None:
    path = tmp_path / "team.toml"
    path.write_text(toml)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert str(path) in str(err) and err.path == str(path)
    assert err.agent == agent and err.key == key
    assert fragment in str(err)
    if agent:
        assert f"(agent {agent!r})" in str(err)


def test_unreadable_file_and_python_objects() -> None:
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy("/nonexistent/policy.toml")
    with pytest.raises(PolicyError, match=r"<policy>: agents\.x\.grants\.files\.access"):
        Policy.from_dict({"agents": {"x": {"grants": {"files": {"access": "all"}}}}})
    grant = AreaGrant(access="write", models=("gemini-*",), deny=("delete",), own=True)
    assert grant.describe() == "write; models gemini-*; not delete; own resources"
