"""A Live session through the gateway cannot name a resource the agent may not use: not in
its setup message, nor in a later turn (google-genai's Live client against a stand-in Live
upstream on loopback, as in tests/gateway/test_gateway_live.py; asyncio only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_helpers import FLASH, ServedApp, running
from google.genai import types
from test_gateway_live import LIVE_POLICY, LiveUpstream, _client, _talk, tls  # noqa: F401

pytestmark = pytest.mark.anyio

FILE = "files/theirs"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_live_session_cannot_name_a_file_without_a_grant(
    tmp_path: Path,
    tls: dict[str, str],  # noqa: F811
) -> None:
    up = LiveUpstream()
    part = types.Part(file_data=types.FileData(file_uri=FILE, mime_type="text/plain"))
    with (
        ServedApp(up.app()) as upstream,
        running(
            upstream.base_url, tmp_path, agents=("talker",), policy=LIVE_POLICY,
            serve_options=tls,
        ) as run,
    ):  # fmt: skip
        c = _client(run.base_url, run.tokens["talker"], tls)
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.TEXT],
            system_instruction=types.Content(parts=[part]),
        )
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises on the closed socket
            async with c.aio.live.connect(model=FLASH, config=config) as session:
                await session.send_client_content(turns=types.Content(role="user", parts=[part]))
                async for _ in session.receive():
                    pass
        assert up.sessions == []  # the setup named the file: nothing reached upstream
        plain = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
        with pytest.raises(Exception, match="quotaflow policy"):
            async with c.aio.live.connect(model=FLASH, config=plain) as session:
                await session.send_client_content(
                    turns=types.Content(role="user", parts=[part]), turn_complete=True
                )
                async for _ in session.receive():
                    pass
        assert len(up.sessions) == 1  # that session's setup went up, its turn did not
        assert await _talk(c) == "live hello"  # a session naming nothing goes on as before
    assert FILE not in str(up.messages), up.messages  # the turn naming it never went up
