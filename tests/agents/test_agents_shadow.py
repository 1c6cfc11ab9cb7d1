"""Shadow mode through an agent's client: every call goes out, the audit log says what the
limiter would have done."""

from __future__ import annotations

import pytest
from agents_helpers import FLASH, KEY, Records, limiter
from google import genai

from quotaflow.emulator import ServedEmulator

POLICY = {"agents": {"researcher": {"grants": {"content": "write"}}}}


@pytest.mark.anyio
async def test_the_audit_log_records_the_waits_shadow_mode_would_impose(
    served: ServedEmulator, records: Records
) -> None:
    lim = limiter(POLICY, rpm=2, mode="shadow")
    handle = lim.agent("researcher", audit=records.log)
    client = genai.Client(api_key=KEY, http_options=handle.http_options(base_url=served.base_url))
    for i in range(4):  # a burst: two fit the limit, two would wait for the next window
        await client.aio.models.generate_content(model=FLASH, contents=f"call {i}")
    await client.aio.aclose()
    got = [r for r in records.flushed() if r.method == "generateContent"]
    assert [r.outcome for r in got] == ["ok"] * 4  # every call went through
    assert [r.would_wait is not None for r in got] == [False, False, True, True]
    assert all(r.would_wait is not None and r.would_wait > 0 for r in got[2:])
    assert all(r.would_refuse is None for r in got)
