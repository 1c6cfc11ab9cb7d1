"""google-genai's own options through ``genai_http_options`` and ``handle.http_options``:
merged, or a ``ConfigError`` that says what to do; and the HTTP package the SDK picks, asked
of the real google-genai 3.x (installed) and 2.x (in a subprocess)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from quotaflow import RPM, ConfigError, Limiter
from quotaflow.agents import Agents, Policy
from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import QuotaTransport, genai_http_options
from quotaflow.transports.genai_sdk import genai_http_package

FLASH = "gemini-2.5-flash"
KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"
GENAI_2 = "google-genai==2.34.0"  # the last 2.x line (the last release for Python 3.10)


def _agents() -> Agents:
    policy = Policy.from_dict({"agents": {"a": {"grants": {"content": "write"}}}})
    return Agents(Limiter(None, quotas={FLASH: [RPM(600, 1.0)]}), policy)


def _limiter() -> Limiter:
    return _agents().limiter


@pytest.fixture(scope="module")
def served() -> Any:
    config = EmulatorConfig(keys=[ApiKeyConfig(key=KEY)], models=[ModelConfig(name=FLASH)])
    with serve(config) as s:
        yield s


@pytest.mark.parametrize("maker", ["genai_http_options", "handle"])
def test_the_sdk_retries_are_refused_with_what_to_set_instead(maker: str) -> None:
    agents = _agents()
    lim = agents.limiter
    make: Any = genai_http_options if maker == "genai_http_options" else None
    retry = types.HttpRetryOptions(attempts=3)
    with pytest.raises(ConfigError) as caught:
        if make is not None:
            make(lim, retry_options=retry)
        else:
            agents.agent("a").http_options(retry_options=retry)
    message = str(caught.value)
    assert "retry_options=" in message and "max_429_retries=" in message
    assert "_Options" not in message and "build()" not in message


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("client_args", {"transport": httpx.HTTPTransport()}, "transport=yours"),
        ("httpx_client", httpx.Client(), "client_args="),
        ("sizzing", "count", "sizing"),  # a misspelt transport option
    ],
)
def test_what_cannot_be_merged_names_the_fix(field: str, value: Any, fix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        genai_http_options(_limiter(), **{field: value})
    assert field in str(caught.value) and fix in str(caught.value)


def test_a_transport_given_an_unknown_option_says_which_it_takes() -> None:
    with pytest.raises(ConfigError, match="max_429_retries") as caught:
        QuotaTransport(_limiter(), max_retries=2)
    assert "max_retries" in str(caught.value)


@pytest.mark.anyio
async def test_the_sdk_options_are_merged_and_calls_still_go_through_the_transports(
    served: ServedEmulator,
) -> None:
    seen: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request)

    agents = _agents()
    lim = agents.limiter
    for make in ("genai_http_options", "handle"):
        seen.clear()
        options: dict[str, Any] = {
            "base_url": served.base_url,
            "backend": "httpx",
            "headers": {"x-team": "blue"},
            "async_client_args": {"event_hooks": {"request": [hook]}},
            "extra_body": {"labels": {"team": "blue"}},
        }
        http = (
            genai_http_options(lim, **options)
            if make == "genai_http_options"
            else agents.agent("a").http_options(**options)
        )
        client = genai.Client(api_key=KEY, http_options=http)
        try:
            await client.aio.models.generate_content(model=FLASH, contents="hi")
        finally:
            await client.aio.aclose()
            client.close()
        (request,) = seen  # the caller's client args are the client's
        assert request.headers["x-team"] == "blue"
        assert json.loads(request.content)["labels"] == {"team": "blue"}
    assert (await lim.status(FLASH))["rpm"].used == 2  # both went through the transports


@pytest.mark.parametrize("variable", [None, "httpx", "httpx2"])
def test_google_genai_3_picks_from_the_variable_then_the_transports(
    monkeypatch: pytest.MonkeyPatch, variable: str | None
) -> None:
    import google.genai

    assert google.genai.__version__.startswith("3.")
    if variable is None:
        monkeypatch.delenv("GOOGLE_GENAI_HTTP_CLIENT", raising=False)
    else:
        monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", variable)
    agents = _agents()
    lim = agents.limiter
    own = genai_http_package()
    assert own == (variable or "httpx2")  # 3.x prefers httpx2 when installed
    # with options, 3.x looks at the transports they hold, unless the variable says otherwise
    for flavor in ("httpx", "httpx2"):
        if variable is not None and variable != flavor:
            with pytest.raises(ConfigError, match=f"GOOGLE_GENAI_HTTP_CLIENT='{variable}'"):
                genai_http_options(lim, backend=flavor)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match=f"backend='{variable}'"):
                agents.agent("a").http_options(backend=flavor)  # type: ignore[arg-type]
            continue
        http = genai_http_options(lim, backend=flavor)  # type: ignore[arg-type]
        assert genai_http_package(http) == flavor
        assert genai_http_package(agents.agent("a").http_options(backend=flavor)) == flavor  # type: ignore[arg-type]


_GENAI_2_SCRIPT = r"""
import json, os, sys
import google.genai
from quotaflow import RPM, ConfigError, Limiter
from quotaflow.transports.genai_sdk import genai_http_package
from quotaflow.agents import Agents, Policy
from quotaflow.transports import genai_http_options

policy = Policy.from_dict({"agents": {"a": {"grants": {"content": "write"}}}})
agents = Agents(Limiter(None, quotas={"gemini-2.5-flash": [RPM(60)]}), policy)
lim = agents.limiter
out = {"version": google.genai.__version__, "own": genai_http_package()}
for flavor in ("httpx", "httpx2"):
    for name, make in (("options", lambda f: genai_http_options(lim, backend=f)),
                       ("handle", lambda f: agents.agent("a").http_options(backend=f))):
        try:
            http = make(flavor)
            out[f"{name}:{flavor}"] = type(http.client_args["transport"]).__name__
        except ConfigError as exc:
            out[f"{name}:{flavor}"] = "ConfigError: " + str(exc)
auto = genai_http_options(lim)
out["auto"] = type(auto.client_args["transport"]).__name__
out["auto_handle"] = type(agents.agent("a").http_options().client_args["transport"]).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def genai_2(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """google-genai 2.x, installed apart (``QUOTAFLOW_GENAI2_DIR``: one already there)."""
    given = os.environ.get("QUOTAFLOW_GENAI2_DIR")
    if given:
        return pathlib.Path(given)
    target = tmp_path_factory.mktemp("genai2")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            GENAI_2,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"could not install {GENAI_2}: {done.stderr[-500:]}")
        pytest.skip(f"{GENAI_2} could not be installed here (offline?)")
    return target


@pytest.mark.parametrize("variable", [None, "httpx2"])
def test_google_genai_2_picks_from_the_variable_only(
    genai_2: pathlib.Path, variable: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_GENAI_HTTP_CLIENT"}
    if variable is not None:
        env["GOOGLE_GENAI_HTTP_CLIENT"] = variable
    root = pathlib.Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(genai_2), str(root)])
    done = subprocess.run(
        [sys.executable, "-c", _GENAI_2_SCRIPT], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["version"].startswith("2.")
    picked = variable or "httpx"  # 2.x: the variable, else httpx; never the transports
    assert out["own"] == picked
    other = "httpx2" if picked == "httpx" else "httpx"
    built = {"httpx": "SyncQuotaTransport", "httpx2": "SyncHttpx2QuotaTransport"}
    assert out[f"options:{picked}"] == built[picked]
    assert out[f"handle:{picked}"] == built[picked]  # an agent's transport is a quota transport
    # the other package's transports could not be driven: both makers refuse them at once
    for name in ("options", "handle"):
        assert out[f"{name}:{other}"].startswith("ConfigError: google-genai will use " + picked)
    assert out["auto"] == built[picked]  # auto follows the SDK, for both makers alike
    assert out["auto_handle"] == out[f"handle:{picked}"]
