"""A hostile agent against its own policy, budget and the key's redaction: each way past them
that was found, and the tricks that held, through the agent transports (plain httpx and
google-genai) against the emulator over loopback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents_helpers import FLASH, KEY, PRO, EmulatorRequests, Records, emulator_config, limiter

from quotaflow import RPD, RPM, TPM, Limiter
from quotaflow.agents import Agents, Policy
from quotaflow.emulator import FaultConfig, ServedEmulator, serve
from quotaflow.errors import ConfigError

pytestmark = pytest.mark.anyio

GEN = {"contents": [{"parts": [{"text": "hi"}]}]}
UNKNOWN = [RPM(600, 1.0), TPM(1_000_000, 1.0), RPD(100_000)]


def _client(
    lim: Limiter, agent: str, served: ServedEmulator, records: Records
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
        transport=lim.agent(agent, audit=records.log).transport(),
    )


def _generate(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def _generates(seen: EmulatorRequests) -> int:
    return sum(1 for line in seen.lines if ":generateContent" in line and "-> 200" in line)


# ---- 1. a model name cannot reach a budget's scope -----------------------------------------


async def test_a_model_named_like_a_budget_neither_raises_it_nor_reaches_the_server(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {
        "agents": {
            name: {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}
            for name in ("selfish", "researcher")
        }
    }
    lim = limiter(policy, unknown_model=UNKNOWN)
    async with _client(lim, "selfish", served, records) as http:
        for model in ("budget@selfish", "budget@researcher", "budget%40selfish"):
            r = await http.post(_generate(model), json=GEN)
            assert r.status_code == 400, (model, r.status_code)
        # a model named like the agent reaches the server (404) and spends one request
        assert (await http.post(_generate("selfish"), json=GEN)).status_code == 404
        codes = [(await http.post(_generate(FLASH), json=GEN)).status_code for _ in range(3)]
    assert codes == [200, 429, 429], "the budget of 2 a day no longer holds"
    assert _generates(requests_seen) == 1
    assert not any("budget" in line for line in requests_seen.lines)
    with pytest.raises(ConfigError, match="not a Gemini model name"):
        await lim.limiter.acquire("budget@researcher")
    status = await lim.budget.status("researcher")
    assert status["rpd"].limit == 2


# ---- 6. a sent call keeps its budget request, whatever happened after --------------------


async def test_client_timeouts_do_not_give_the_budget_back(records: Records) -> None:
    policy = {"agents": {"a": {"grants": {"content": "write"}, "budget": {"requests_per_day": 3}}}}
    lim = limiter(policy)
    slow = emulator_config(faults=FaultConfig(latency_seconds=0.5))
    with EmulatorRequests().attached() as seen:
        async with serve(slow) as served:
            transport = lim.agent("a", audit=records.log).transport(max_5xx_retries=0)
            async with httpx.AsyncClient(
                base_url=served.base_url,
                headers={"x-goog-api-key": KEY},
                transport=transport,
                timeout=0.1,
            ) as http:
                for _ in range(3):
                    with pytest.raises(httpx.ReadTimeout):
                        await http.post(_generate(FLASH), json=GEN)
                r = await http.post(_generate(FLASH), json=GEN)
            assert r.status_code == 429, "a fourth call went out on a budget of 3"
            status = await lim.budget.status("a")
    assert status["rpd"].used == 3
    last = records.flushed()[-1]
    assert (last.decision, last.reason) == ("denied", "budget")
    del seen


# ---- 7. [default] is a full policy, each agent with its own budget ---------------------------


async def test_default_budget_holds_for_each_agent_it_covers(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"default": {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}}
    lim = limiter(policy)
    for agent in ("anon-1", "anon-2"):
        async with _client(lim, agent, served, records) as http:
            codes = [(await http.post(_generate(FLASH), json=GEN)).status_code for _ in range(3)]
        assert codes == [200, 200, 429], agent
    assert _generates(requests_seen) == 4


async def test_a_pooled_default_budget_gains_nothing_from_made_up_names(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    """With ``per = "pool"`` every agent the policy does not name spends one budget: a client
    that names a new agent per call still gets the budget once, and a named agent keeps its
    own."""
    policy = {
        "agents": {"named": {"grants": {"content": "write"}, "budget": {"requests_per_day": 1}}},
        "default": {
            "grants": {"content": "write"},
            "budget": {"requests_per_day": 3, "per": "pool"},
        },
    }
    lim = limiter(policy)
    codes = []
    for i in range(6):
        async with _client(lim, f"minted-{i}", served, records) as http:
            codes.append((await http.post(_generate(FLASH), json=GEN)).status_code)
    assert codes == [200, 200, 200, 429, 429, 429]
    async with _client(lim, "named", served, records) as http:
        assert (await http.post(_generate(FLASH), json=GEN)).status_code == 200
    assert _generates(requests_seen) == 4
    refused = [r for r in records.flushed() if r.reason == "budget"]
    assert [r.agent for r in refused] == ["minted-3", "minted-4", "minted-5"]
    with pytest.raises(ConfigError, match=r"agents.named.budget.per: 'pool' is for"):
        Policy.from_dict({"agents": {"named": {"budget": {"requests_per_day": 1, "per": "pool"}}}})


async def test_default_share_holds_for_the_agents_it_covers() -> None:
    from quotaflow.clock import ManualClock
    from quotaflow.errors import QuotaError

    policy = {
        "agents": {"named": {"grants": {"content": "write"}}},
        "default": {"grants": {"content": "write"}, "share": {"ceiling": 0.5}},
    }
    lim = limiter(policy, rpm=10, clock=ManualClock())
    taken = 0
    for i in range(10):  # unnamed agents share the default's half of the limit
        try:
            await (await lim.limiter.acquire_nowait(FLASH, agent=f"anon-{i % 3}")).settle()
            taken += 1
        except QuotaError:
            pass
    assert taken == 5
    for _ in range(5):  # a named agent without a share is not held to the default's
        await (await lim.limiter.acquire_nowait(FLASH, agent="named")).settle()


# ---- 2. the key never shows, in any spelling of its parameter --------------------------------

SECRET = "qf-Secret.key_4242-not-shaped-like-google"  # no pattern could hide it: only its name
SPELLINGS = ("key", "%24key", "$key", "%6Bey", "KEY", "%4B%45%59", "Key")


def _forms(secret: str) -> set[str]:
    from urllib.parse import quote, quote_plus

    return {secret, quote(secret, safe=""), quote_plus(secret), secret.casefold()}


async def test_the_key_in_every_spelling_stays_out_of_audit_logs_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from google import genai

    from quotaflow.agents import AuditLog, JsonLinesSink
    from quotaflow.emulator import ApiKeyConfig

    caplog.set_level(logging.DEBUG)
    config = emulator_config(faults=FaultConfig(error_rate_503=1.0))
    config = config.model_copy(update={"keys": [*config.keys, ApiKeyConfig(key=SECRET)]})
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog([JsonLinesSink(audit_path)])
    lim = limiter({"agents": {"a": {"grants": {"content": "write"}}}})
    outputs: list[str] = []
    async with serve(config) as served:
        transport = lim.agent("a", audit=audit).transport(max_5xx_retries=1, backoff=0.0)
        async with httpx.AsyncClient(base_url=served.base_url, transport=transport) as http:
            for name in SPELLINGS:
                r = await http.post(f"{_generate(FLASH)}?{name}={SECRET}&alt=json", json=GEN)
                outputs.append(repr(r.extensions.get("quotaflow_agents")))
                outputs.append(repr(r.extensions.get("quotaflow")))
                outputs.append(r.text)
                # a malformed one, and one denied: their records and answers too
                r = await http.post(f"/v1beta/models/x/%2e%2e/y:generateContent?{name}={SECRET}")
                assert r.status_code == 400
                outputs.append(r.text)
                r = await http.get(f"/v1beta/files?{name}={SECRET}")
                assert r.status_code == 403
                outputs.append(r.text)
        # the SDK too, with its own key header
        client = genai.Client(
            api_key=SECRET,
            http_options=lim.agent("a", audit=audit).http_options(
                base_url=served.base_url, api_version="v1beta", max_5xx_retries=0
            ),
        )
        try:
            with pytest.raises(Exception) as err:
                await client.aio.models.generate_content(model=FLASH, contents="x")
        finally:
            await client.aio.aclose()
            client.close()
        outputs.append(str(err.value))
    audit.close()
    outputs.append(audit_path.read_text())
    outputs.extend(rec.getMessage() for rec in caplog.records)
    outputs.extend(str(rec.__dict__) for rec in caplog.records)
    assert any("HTTP Request" in line for line in outputs), "httpx's request lines were not seen"
    assert any("retry 1" in line for line in outputs), "quotaflow's retry line was not seen"
    assert len(audit_path.read_text().splitlines()) == 3 * len(SPELLINGS) + 1
    text = "\n".join(outputs)
    for form in _forms(SECRET):
        assert form not in text, f"the key shows as {form!r}"


def test_redaction_matches_the_decoded_case_folded_name() -> None:
    from quotaflow.agents.audit import path_template
    from quotaflow.gemini import redact_text, redact_url

    for name in (*SPELLINGS, "access_token", "%24ACCESS_TOKEN", "api%5Fkey"):
        url = f"https://h/v1beta/models?{name}={SECRET}&pageSize=5"
        assert SECRET not in redact_url(url), name
        assert SECRET not in redact_text(f"GET {url} failed"), name
        assert path_template(url) == "/v1beta/models?pagesize=5", name


# ---- 3 and 5. one canonical path: decoded once, malformed ones never sent --------------------

OWN = {"access": "write", "own": True}


def _exists(served: ServedEmulator, name: str) -> bool:
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as raw:
        return raw.get(f"/v1beta/{name}").status_code == 200


def test_own_is_checked_on_the_decoded_path(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"agents": {n: {"grants": {"files": OWN}} for n in ("alice", "mallory")}}
    lim = limiter(policy)

    def upload(agent: str, name: str) -> None:
        transport = lim.agent(agent, audit=records.log).sync_transport()
        with httpx.Client(
            base_url=served.base_url, headers={"x-goog-api-key": KEY}, transport=transport
        ) as http:
            start = http.post(
                "/upload/v1beta/files",
                json={"file": {"name": name, "mimeType": "text/plain"}},
                headers={
                    "x-goog-upload-protocol": "resumable",
                    "x-goog-upload-command": "start",
                    "x-goog-upload-header-content-type": "text/plain",
                    "x-goog-upload-header-content-length": "4",
                },
            )
            done = http.post(
                start.headers["x-goog-upload-url"],
                content=b"data",
                headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"},
            )
            assert done.status_code == 200, done.text

    upload("alice", "files/cabc")
    upload("mallory", "files/%63abc")  # the encoded spelling of alice's file id
    requests_seen.clear()
    transport = lim.agent("mallory", audit=records.log).sync_transport()
    with httpx.Client(
        base_url=served.base_url, headers={"x-goog-api-key": KEY}, transport=transport
    ) as http:
        for path in ("/v1beta/files/%63abc", "/v1beta/files/cabc"):
            r = http.delete(path)
            assert r.status_code == 403 and "not_owner" in r.text, (path, r.status_code)
        for path in (
            "/v1beta/files/mine/%2e%2e/cabc",
            "/v1beta/files/x%2Fcabc",
            "/v1beta//files/cabc",
        ):
            r = http.delete(path)
            assert r.status_code == 400, (path, r.status_code)
    assert requests_seen.lines == [], "a denied delete reached the emulator"
    assert _exists(served, "files/cabc")
    last = records.flushed()[-1]
    assert (last.decision, last.reason, last.status) == ("denied", "malformed", 400)


@pytest.mark.parametrize(
    "path",
    [
        f"/v1beta/models/{PRO}/x:generateContent",
        f"/v1beta/models/{FLASH}/%2e%2e/{PRO}:generateContent",
        f"/v1beta/models/{FLASH}/..%2F{PRO}:generateContent",
        f"/v1beta/models/{FLASH}%2F..%2F{PRO}:generateContent",
        f"/v1beta/models/{FLASH}/./x:generateContent",
        f"/v1beta/models/%252e%252e/{PRO}:generateContent",
        f"/v1beta/models/{PRO}%00:generateContent",
        f"/v1beta/models/{PRO}%E2%80%8B:generateContent",
    ],
)
async def test_extra_or_encoded_segments_never_drop_the_model(
    path: str, served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    grants = {"content": {"access": "write", "models": [f"{FLASH}*"]}}
    lim = limiter({"agents": {"a": {"grants": grants}}})
    async with _client(lim, "a", served, records) as http:
        r = await http.post(path, json=GEN)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert requests_seen.lines == []
    (rec,) = records.flushed()
    assert (rec.decision, rec.reason, rec.outcome) == ("denied", "malformed", "denied")


# ---- 4. method overrides are refused -------------------------------------------------------


async def test_a_method_override_cannot_turn_a_create_into_a_delete(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    caching = {"access": "write", "own": True, "deny": ["delete"]}
    policy = {"agents": {n: {"grants": {"caching": caching}} for n in ("owner", "mallory")}}
    lim = limiter(policy)
    body = {"model": f"models/{FLASH}", "contents": [{"parts": [{"text": "w " * 20}]}]}
    async with _client(lim, "owner", served, records) as http:
        r = await http.post("/v1beta/cachedContents", json=body)
        assert r.status_code == 200
        name = r.json()["name"]
    requests_seen.clear()
    async with _client(lim, "mallory", served, records) as http:
        for headers, query in (
            ({"X-HTTP-Method-Override": "DELETE"}, ""),
            ({"x-http-method-override": "delete"}, ""),
            ({}, "?$httpMethod=DELETE"),
            ({}, "?%24httpmethod=DELETE"),
        ):
            r = await http.post(f"/v1beta/{name}{query}", json={}, headers=headers)
            assert r.status_code == 400, (headers, query, r.status_code)
    assert requests_seen.lines == []
    assert _exists(served, name)


# ---- the tricks that held ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", f"/v1beta/models/{PRO}%3AgenerateContent", 403),
        ("POST", f"/v1beta/models%2F{PRO}:generateContent", 400),
        ("POST", "/v1beta/models/Gemini-2.5-Pro:generateContent", 403),
        ("POST", f"/v1/models/{PRO}:generateContent", 403),
        ("POST", f"/v1alpha/models/{PRO}:streamGenerateContent?alt=sse", 403),
        ("POST", f"/v1beta/models/{FLASH}/../{PRO}:generateContent", 403),  # httpx normalises
        ("DELETE", "/v1beta/files/abc", 403),
        ("GET", "/v1beta/corpora", 403),
    ],
)
async def test_url_tricks_that_held(
    method: str,
    path: str,
    status: int,
    served: ServedEmulator,
    records: Records,
    requests_seen: EmulatorRequests,
) -> None:
    grants = {"content": {"access": "write", "models": [f"{FLASH}*"]}}
    lim = limiter({"agents": {"a": {"grants": grants}}})
    async with _client(lim, "a", served, records) as http:
        r = await http.request(method, path, json=GEN if method == "POST" else None)
    assert r.status_code == status or {r.status_code, status} == {400, 403}, r.text
    assert requests_seen.lines == []


async def test_openai_route_with_a_forbidden_model_and_a_duplicate_key_held(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    grants = {"content": {"access": "write", "models": [f"{FLASH}*"]}}
    lim = limiter({"agents": {"a": {"grants": grants}}})
    msgs = '"messages": [{"role": "user", "content": "hi"}]'
    async with _client(lim, "a", served, records) as http:
        r = await http.post("/v1beta/openai/chat/completions", json={"model": PRO, "messages": []})
        assert r.status_code == 403
        dup = f'{{"model": "{FLASH}", {msgs}, "model": "{PRO}"}}'
        r = await http.post(
            "/v1beta/openai/chat/completions",
            content=dup,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 403
        # a named handle ignores the header naming another agent
        r = await http.get("/v1beta/files", headers={"x-quotaflow-agent": "admin"})
        assert r.status_code == 403
    assert requests_seen.lines == []


# ---- 8. resources named in a body are grants too; check() makes the transports' decision ----


async def test_a_body_cannot_use_a_resource_of_an_area_without_a_grant(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {
        "agents": {
            "owner": {"grants": {"caching": "write", "files": "write", "content": "write"}},
            "mallory": {"grants": {"content": "write"}},
            "reader": {"grants": {"content": "write", "caching": "read"}},
            "mine_only": {
                "grants": {"content": "write", "caching": {"access": "write", "own": True}}
            },
        }
    }
    lim = limiter(policy)
    body = {"model": f"models/{FLASH}", "contents": [{"parts": [{"text": "w " * 50}]}]}
    async with _client(lim, "owner", served, records) as http:
        cache = (await http.post("/v1beta/cachedContents", json=body)).json()["name"]
    requests_seen.clear()
    uses = {
        "cachedContent": {**GEN, "cachedContent": cache},
        "snake_case": {**GEN, "cached_content": cache},
        "fileUri": {
            "contents": [
                {"parts": [{"fileData": {"fileUri": f"{served.base_url}/v1beta/files/abc"}}]}
            ]
        },
    }
    async with _client(lim, "mallory", served, records) as http:
        for what, use in uses.items():
            r = await http.post(_generate(FLASH), json=use)
            assert r.status_code == 403 and "no_grant" in r.text, what
            assert lim.agent("mallory").check("POST", _generate(FLASH), use).reason == "no_grant"
    async with _client(lim, "mine_only", served, records) as http:
        r = await http.post(_generate(FLASH), json=uses["cachedContent"])
        assert r.status_code == 403 and "not_owner" in r.text
    assert requests_seen.lines == []
    async with _client(lim, "reader", served, records) as http:  # read is enough to use it
        r = await http.post(_generate(FLASH), json=uses["cachedContent"])
        assert r.status_code == 200, r.text


async def test_a_resource_named_in_any_json_spelling_of_the_body_is_checked(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    # the JSON text may write the name with escapes, or in UTF-16/UTF-32 (which the JSON
    # parser reads too): the name is checked whatever the bytes look like
    lim = limiter({"agents": {"mallory": {"grants": {"content": "write"}}}})
    plain = '{"cachedContent": "cachedContents/abc", "contents": [{"parts": [{"text": "x"}]}]}'
    bodies = {
        "escaped slash": plain.replace("cachedContents/", "cachedContents\\/").encode(),
        "unicode escape": plain.replace('"cachedContents/', '"\\u0063achedContents/').encode(),
        "utf-16": plain.encode("utf-16"),
        "utf-16-le": plain.encode("utf-16-le"),
        "utf-32-be": plain.encode("utf-32-be"),
        "utf-8 bom": plain.encode("utf-8-sig"),
    }
    headers = {"content-type": "application/json"}
    async with _client(lim, "mallory", served, records) as http:
        for what, content in bodies.items():
            r = await http.post(_generate(FLASH), content=content, headers=headers)
            assert r.status_code == 403 and "no_grant" in r.text, what
    assert requests_seen.lines == []


def test_check_gives_the_transports_decision_for_a_model_in_a_create_body() -> None:
    grants = {"caching": "write", "content": {"access": "write", "models": [f"{FLASH}*"]}}
    caching = {"access": "write", "models": [f"{FLASH}*"]}
    lim = limiter({"agents": {"a": {"grants": {**grants, "caching": caching}}}})
    handle = lim.agent("a")
    body = {"model": f"models/{PRO}", "contents": [{"parts": [{"text": "x"}]}]}
    decision = handle.check("POST", "/v1beta/cachedContents", body)
    assert (decision.allowed, decision.reason) == (False, "model_denied")
    ok = handle.check("POST", "/v1beta/cachedContents", {**body, "model": FLASH})
    assert ok.allowed
    override = handle.check(
        "POST", "/v1beta/cachedContents/c1", {}, headers={"X-HTTP-Method-Override": "DELETE"}
    )
    assert override.reason == "malformed"


# ---- 9 and 10. strict parsing: one key per grant, no booleans as numbers, typed errors ------


@pytest.mark.parametrize(
    ("grants", "first", "second"),
    [
        ({"caching": {"access": "write", "own": True}, "caches": "read"}, "caching", "caches"),
        ({"content": "read", "models": "write"}, "content", "models"),
        ({"tuning": "read", "tuned_models": "write"}, "tuning", "tuned_models"),
    ],
)
def test_a_grant_and_its_alias_together_are_an_error(
    grants: dict[str, Any], first: str, second: str
) -> None:
    from quotaflow.agents import PolicyError

    with pytest.raises(PolicyError) as err:
        Policy.from_dict({"agents": {"a": {"grants": grants}}})
    assert first in str(err.value) and second in str(err.value) and "keep one" in str(err.value)
    assert err.value.agent == "a"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (None, "table"),
        ([], "table"),
        ({"agents": {"a": {"priority": True}}}, "priority"),
        ({"agents": {"a": {"share": {"floor": True}}}}, "floor"),
        ({"agents": {"a": {"budget": {"requests_per_day": True}}}}, "requests_per_day"),
        ({"default": {"budget": {"tokens_per_day": False}}}, "tokens_per_day"),
        ({"agents": {"a\x00b": {}}}, "printable"),
        ({"agents": {"a\nb": {}}}, "printable"),
        ({"agents": {"a\u200bb": {}}}, "printable"),
        ({"agents": {"a@b": {}}}, "'@'"),
    ],
)
def test_bad_policies_raise_a_policy_error_naming_the_field(data: Any, field: str) -> None:
    from quotaflow.agents import PolicyError

    with pytest.raises(PolicyError, match=field):
        Policy.from_dict(data)


def test_bad_limiter_arguments_raise_config_errors_naming_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import math

    from quotaflow import Limit

    cases: list[tuple[Any, str]] = [
        (lambda: Limiter(headroom="0.1"), "headroom"),
        (lambda: Limiter(tier=5), "tier"),
        (lambda: Limiter(None, quotas={"m": RPM(5)}), "quotas"),
        (lambda: Limiter(backend=5), "backend"),
        (lambda: Agents(Limiter(), 5), "policy"),  # type: ignore[arg-type]
        (lambda: Limit("rpm", 5, True), "period"),
        (lambda: Limit("rpm", 5, math.inf), "period"),
    ]
    for make, name in cases:
        with pytest.raises(ConfigError, match=name):
            make()
    monkeypatch.setenv("QUOTAFLOW_LIMITS", "{")
    with pytest.raises(ConfigError, match="QUOTAFLOW_LIMITS"):
        Limiter(None, quotas={"m": [RPM(5)]})
    for bad in ("m:rpm=\u0663", "m:rpm=5,rpm=6", '{"m": {"rpm": 5}, "m": {"rpm": 6}}'):
        monkeypatch.setenv("QUOTAFLOW_LIMITS", bad)
        with pytest.raises(ConfigError, match="QUOTAFLOW_LIMITS"):
            Limiter(None, quotas={"m": [RPM(5)]})
        with pytest.raises(ConfigError, match="QUOTAFLOW_LIMITS"):
            Limiter("tier1")
    monkeypatch.setenv("QUOTAFLOW_LIMITS", "m:rpm=7")
    assert Limiter(None, quotas={"m": [RPM(5)]}).quota("m")[0].amount == 7


async def test_bad_acquire_arguments_raise_config_errors_naming_them() -> None:
    lim = Limiter(None, quotas={"m": [RPM(5)]})
    async with lim.acquire("m"):
        pass  # the model's fast lane exists from here on
    for kw, name in (({"cost": 5}, "cost"), ({"agent": 5}, "agent"), ({"agent": "a\nb"}, "agent")):
        with pytest.raises(ConfigError, match=name):
            await lim.acquire("m", **kw)
    with pytest.raises(ConfigError, match="not a Gemini model name"):
        await lim.acquire("m@x")


async def test_an_agent_named_by_header_with_invisible_characters_is_refused(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    lim = limiter({"default": {"grants": {"content": "write"}}})
    async with httpx.AsyncClient(
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
        transport=lim.agent(audit=records.log).transport(),
    ) as http:
        r = await http.post(_generate(FLASH), json=GEN, headers={"x-quotaflow-agent": "a\tb"})
        assert r.status_code == 400
        r = await http.post(_generate(FLASH), json=GEN, headers={"x-quotaflow-agent": " a"})
        assert r.status_code == 400
    assert requests_seen.lines == []


# ---- found in review: an interaction run by an agent, padded bodies, the spend scope --------


async def test_an_interaction_naming_no_model_is_not_covered_by_a_model_grant(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"agents": {"a": {"grants": {"content": {"access": "write", "models": [FLASH]}}}}}
    lim = limiter(policy)
    async with _client(lim, "a", served, records) as http:
        body = {"agent": "deep-research-pro-preview-12-2025", "input": "hi", "background": True}
        r = await http.post("/v1beta/interactions", json=body)
    assert r.status_code == 403 and "names no model" in r.text
    assert not any("interactions" in line for line in requests_seen.lines)


async def test_padding_a_body_does_not_skip_its_reference_check(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"agents": {"a": {"grants": {"content": "write"}}}}  # no files grant at all
    lim = limiter(policy)
    ref = {"fileData": {"fileUri": f"{served.base_url}/v1beta/files/theirs"}}
    padded = {"contents": [{"parts": [{"text": "a"}] * 100_001 + [ref]}]}
    as_uri = {"model": FLASH, "input": [{"type": "document", "uri": "files/theirs"}]}
    async with _client(lim, "a", served, records) as http:
        r1 = await http.post(_generate(FLASH), json=padded)
        r2 = await http.post("/v1beta/interactions", json=as_uri)
    assert (r1.status_code, r2.status_code) == (400, 403)
    assert _generates(requests_seen) == 0


async def test_an_agent_cannot_take_the_projects_spend() -> None:
    lim = limiter({"agents": {"a": {"grants": {"embeddings": "read"}}}})
    with pytest.raises(ConfigError, match="Gemini model only"):
        await lim.agent("a").acquire("quotaflow:spend", cost={"usd_micros": 10_000_000})


async def test_a_batch_cannot_carry_a_model_its_grant_excludes(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"agents": {"a": {"grants": {"batch": {"access": "write", "models": [FLASH]}}}}}
    lim = limiter(policy)
    inner = {"model": f"models/{PRO}", "contents": [{"parts": [{"text": "hi"}]}]}
    body = {"batch": {"input_config": {"requests": {"requests": [{"request": inner}]}}}}
    async with _client(lim, "a", served, records) as http:
        r = await http.post(f"/v1beta/models/{FLASH}:batchGenerateContent", json=body)
    assert r.status_code == 403 and PRO in r.text
    assert not any("batchGenerateContent" in line for line in requests_seen.lines)
