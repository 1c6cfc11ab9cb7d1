"""The call flow: what a quota transport does with one request, written once as a generator
that its drivers (async and sync, httpx and httpx2) run.

* :mod:`~quotaflow.flow.call`: :func:`call_flow`: classify, ask the policy, size, admit, send,
  settle, retry;
* :mod:`~quotaflow.flow.attempts`: admit, send, feed back and retry until an answer;
* :mod:`~quotaflow.flow.sizing`: a call's input tokens, reservations and permits, and what
  they settle with;
* :mod:`~quotaflow.flow.feedback`: a 429 fed back (figures learned, pauses, the day quota);
* :mod:`~quotaflow.flow.batch`, :mod:`~quotaflow.flow.held`: batch jobs' enqueued-token holds
  and files' metadata;
* :mod:`~quotaflow.flow.spend`: the spend permit beside the model permit;
* :mod:`~quotaflow.flow.policy`: the policy stage's protocol (the agents layer implements it);
* :mod:`~quotaflow.flow.refusal`: one Gemini-shaped answer for every call refused here;
* :mod:`~quotaflow.flow.effects`, :mod:`~quotaflow.flow.settings`: the effects, the outcome,
  :class:`CallInfo`, the options.
"""

from __future__ import annotations

from quotaflow.flow.attempts import send_failure
from quotaflow.flow.call import call_flow, directives
from quotaflow.flow.effects import (
    Acquire,
    AcquireBoth,
    CallFlow,
    CallInfo,
    Count,
    Effect,
    Exhaust,
    Hold,
    Learn,
    Lookup,
    Outcome,
    Pause,
    Read,
    Release,
    Send,
    Settle,
    Sleep,
    Watch,
)
from quotaflow.flow.policy import CallPolicy, CallTicket
from quotaflow.flow.settings import (
    BATCH_EXPIRY,
    COUNT_MODEL,
    DOC_ARGS,
    HEADER_PREFIX,
    Options,
    Settings,
    Sizer,
)
from quotaflow.flow.sizing import final_amounts, settle_amounts

__all__ = [
    "BATCH_EXPIRY",
    "COUNT_MODEL",
    "DOC_ARGS",
    "HEADER_PREFIX",
    "Acquire",
    "AcquireBoth",
    "CallFlow",
    "CallInfo",
    "CallPolicy",
    "CallTicket",
    "Count",
    "Effect",
    "Exhaust",
    "Hold",
    "Learn",
    "Lookup",
    "Options",
    "Outcome",
    "Pause",
    "Read",
    "Release",
    "Send",
    "Settings",
    "Settle",
    "Sizer",
    "Sleep",
    "Watch",
    "call_flow",
    "directives",
    "final_amounts",
    "send_failure",
    "settle_amounts",
]
