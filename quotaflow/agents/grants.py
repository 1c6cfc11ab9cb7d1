"""Grant decisions: may this agent make this call? Pure, no I/O.

:func:`decide` takes a policy, an agent name, a classified call (see
:func:`quotaflow.gemini.classify`) and, for the ``own`` scope, who created the resource the
call changes; it returns a :class:`GrantDecision` whose message names the agent, the method,
the area, the access needed and the grant held.

Example:
    >>> from quotaflow.gemini import classify
    >>> from quotaflow.agents.policy import Policy
    >>> policy = Policy.from_dict({"agents": {"indexer": {"grants": {"embeddings": "write"}}}})
    >>> call = classify("DELETE", "/v1beta/files/abc")
    >>> d = decide(policy, "indexer", call)
    >>> d.allowed, d.reason
    (False, 'no_grant')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from quotaflow.agents.policy import METHODS, AgentPolicy, Policy
from quotaflow.gemini import Call
from quotaflow.quotas.shares import agent_name_problem

__all__ = [
    "GrantDecision",
    "Reason",
    "body_references",
    "decide",
    "decide_references",
    "file_batch_decision",
    "may_reference",
    "target_resource",
]

Reason = Literal[
    "granted",
    "no_agent",
    "unknown_agent",
    "unknown_route",
    "no_grant",
    "read_only",
    "method_denied",
    "model_denied",
    "not_owner",
    "malformed",
]
"""Why a call was allowed (``granted``) or denied."""

_CHANGES = frozenset({"update", "delete", "cancel"})
# ``own`` holds every call on a stored interaction to its creator, reads too (a ``get``
# returns the whole conversation): ``interactions.get``, ``.cancel``, ``.delete``, any other
_INTERACTION = "interactions."
_RESOURCE = re.compile(r"(?:^|/)((?:files|cachedContents|batches|tunedModels|interactions)/[^/:]+)")


@dataclass(frozen=True)
class GrantDecision:
    """The answer for one call.

    Attributes:
        allowed: whether the call may leave the process.
        reason: see :data:`Reason`.
        agent: the agent name (``None`` when the call named none).
        method: the method (``generateContent``, ``delete``, ...).
        area: the area of the call.
        needed: the access the call needs (``read``/``write``).
        grant: the grant the agent holds in that area, as text.
        message: a sentence for the caller: who, what, which area, needed, held.
    """

    allowed: bool
    reason: Reason
    agent: str | None
    method: str
    area: str
    needed: str
    grant: str
    message: str


def target_resource(call: Call) -> str | None:
    """The resource a call acts on (``files/abc``, ``batches/x``, ``interactions/x``), from
    its path."""
    m = _RESOURCE.search(call.path)
    return m.group(1) if m else None


_REF_KEYS = frozenset(
    {
        "cachedcontent",
        "cached_content",
        "fileuri",
        "file_uri",
        "filename",
        "file_name",
        "model",
        "basemodel",
        "base_model",
        "src",
        "dest",
        "uri",
    }
)
_REF = re.compile(r"((files|cachedContents|batches|tunedModels)/([^/?#:]*))")
# the part of a name a lenient reader of a URI may take for the id (``files/abc`` of
# ``files/abc.x``): checked beside the whole name
_ID_HEAD = re.compile(r"[A-Za-z0-9_-]*")
_REF_AREAS = {"files": "files", "cachedContents": "caching", "batches": "batch"}
_REF_AREAS["tunedModels"] = "tuning"
_REF_AREAS["interactions"] = "content"
# the key of an Interactions API create that continues a stored interaction (its bare id)
_PREVIOUS_KEYS = frozenset({"previous_interaction_id", "previousinteractionid"})
_PREVIOUS_MARK = re.compile(rb"previous_?interaction_?id", re.IGNORECASE)
_MAX_NODES = 100_000
TOO_LARGE = "body/too-large"
"""What :func:`body_references` names for a body too large to check (refused as malformed)."""


_REF_MARKS = (b"files/", b"cachedContents/", b"batches/", b"tunedModels/")


def may_reference(content: bytes) -> bool:
    """Whether a JSON body's text may name a resource (or be too large to check): ``False``
    means :func:`body_references` of the body it parses to is ``[]``, found without parsing.

    A reference is a string value that holds one of the four collection names and a ``/``,
    or the value of a ``previous_interaction_id`` key (in ASCII letters of either case);
    UTF-8 JSON writes that text as is or with an escape (a backslash). A NUL byte means
    another encoding (UTF-16 or UTF-32, which the JSON parser accepts too): not ruled out
    here. Each node the walk counts is at least one byte of the text, so a body of at most
    ``_MAX_NODES`` bytes is never too large.
    """
    if len(content) > _MAX_NODES or b"\\" in content or b"\x00" in content:
        return True
    return any(mark in content for mark in _REF_MARKS) or bool(_PREVIOUS_MARK.search(content))


def body_references(body: object) -> list[str]:
    """The resources a request body names (``cachedContent``, file URIs in parts, batch
    input files, tuned models, the interaction a ``previous_interaction_id`` continues),
    wherever they are nested, as ``files/abc``-style names.

    Example:
        >>> body_references({"cachedContent": "cachedContents/c1", "contents": [{"parts": [
        ...     {"fileData": {"fileUri": "https://h/v1beta/files/f1"}}]}]})
        ['cachedContents/c1', 'files/f1']
    """
    out: list[str] = []
    stack: list[object] = [body]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return [TOO_LARGE]  # not checked is not allowed: the call is refused
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and isinstance(k, str) and k.casefold() in _REF_KEYS:
                    # every collection name in the value, wherever it stands (``xfiles/a``,
                    # ``files/mine/../files/a``): the server may read any one of them
                    for m in _REF.finditer(v):
                        out.append(m.group(1))
                        head = _ID_HEAD.match(m.group(3))
                        if head is not None and head.group(0) != m.group(3):
                            out.append(f"{m.group(2)}/{head.group(0)}")
                elif isinstance(v, str) and isinstance(k, str) and _previous_key(k):
                    if v:  # an empty id continues nothing
                        out.append(f"interactions/{v}")
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return sorted(set(out), key=out.index)


def _previous_key(key: str) -> bool:
    """Whether ``key`` is ``previous_interaction_id`` in any spelling (ASCII case, camel)."""
    return key.isascii() and key.lower() in _PREVIOUS_KEYS


def decide_references(
    policy: Policy,
    agent: str | None,
    call: Call,
    references: list[str],
    owner: Callable[[str], str | None],
) -> GrantDecision | None:
    """A denial when the body names a resource the agent may not use (``None``: it may).

    Using a resource needs at least ``read`` in its area (``content`` for an interaction);
    with ``own = true`` in that area, only the agent's own resources may be used.
    """
    spec = policy.for_agent(agent)
    if spec is None:
        return None
    who = f"agent {agent!r}" if agent else "a call that names no agent"
    for ref in references:
        if ref == TOO_LARGE:
            text = (
                f"quotaflow policy: {who} may not call {call.action}: the body has more than "
                f"{_MAX_NODES} nodes, too many to check the resources it names"
            )
            return GrantDecision(
                False, "malformed", agent, call.action, call.area, "read", "", text
            )
        head, _, ident = ref.partition("/")
        area = _REF_AREAS[head]
        grant = spec.grant(area)
        reason: Reason | None = None
        why = ""
        if not ident or "%" in ident or ident in (".", ".."):
            reason, why = "malformed", f"the body names {ref!r}, which is not a resource name"
        elif grant.access == "none":
            reason, why = "no_grant", f"grant {area!r} (read at least) in the policy to use it"
        elif grant.own and owner(ref) != agent:
            reason, why = "not_owner", f"{ref} was not created by this agent"
        if reason is not None:
            text = (
                f"quotaflow policy: {who} may not call {call.action} with {ref} in its body: "
                f"area {area!r} needs 'read' access, the agent holds {grant.describe()!r}; {why}"
            )
            return GrantDecision(
                False, reason, agent, call.action, area, "read", grant.describe(), text
            )
    return None


# the areas whose resources a request may name (``fileData``, ``cachedContent``, a tuned model)
_NAMED_AREAS = ("files", "caching", "tuning")


def _input_file(body: Mapping[str, Any]) -> str | None:
    """The input file a batch create names (``batch.inputConfig.fileName``, either spelling)."""
    batch = body.get("batch")
    if not isinstance(batch, Mapping):
        return None
    for ck, config in batch.items():
        if not (isinstance(ck, str) and ck.casefold() in ("inputconfig", "input_config")):
            continue
        if isinstance(config, Mapping):
            for fk, name in config.items():
                if isinstance(fk, str) and fk.casefold() in ("filename", "file_name"):
                    return str(name)
    return None


def file_batch_decision(
    policy: Policy, agent: str | None, call: Call, body: Mapping[str, Any]
) -> GrantDecision | None:
    """A denial for a batch create whose requests are in an input file (``None``: allowed,
    or not such a batch). Those requests are not read here, so they may name any resource:
    the agent must be able to use every resource a request can name (``read`` without
    ``own`` in files, caching and tuning)."""
    source = _input_file(body) if call.area == "batch" and call.creates else None
    spec = policy.for_agent(agent) if source is not None else None
    if spec is None:
        return None
    for area in _NAMED_AREAS:
        grant = spec.grant(area)
        if grant.access != "none" and not grant.own:
            continue
        held = grant.describe()
        text = (
            f"quotaflow policy: agent {agent!r} may not call {call.action} with input file "
            f"{source}: the requests in an input file are not read here and may name a "
            f"resource of area {area!r}, where the agent holds {held!r}; a batch from a file "
            "needs 'read' without 'own' in areas files, caching and tuning (send the requests "
            "inline instead: each is checked)"
        )
        reason: Reason = "not_owner" if grant.own else "no_grant"
        return GrantDecision(False, reason, agent, call.action, area, "read", held, text)
    return None


def decide(
    policy: Policy,
    agent: str | None,
    call: Call,
    *,
    model: str | None = None,
    owner: str | None = None,
) -> GrantDecision:
    """Whether ``agent`` may make ``call`` under ``policy``.

    Args:
        policy: the policy.
        agent: the agent making the call (``None``: the call named no agent).
        call: the classified call.
        model: the model when the call names it only in its body (a cache, a tuning job).
        owner: for the ``own`` scope, the agent that created the resource the call changes
            or, for an interaction, reads (``None``: unknown, e.g. created outside quotaflow
            or by another process).
    """
    model = call.model or model
    method = call.action
    area = call.area
    needed = call.access
    who = f"agent {agent!r}" if agent else "a call that names no agent"

    def verdict(ok: bool, reason: Reason, held: str, why: str) -> GrantDecision:
        target = f" on {model}" if model else ""
        text = (
            f"quotaflow policy: {who} may not call {method}{target} ({call.method} "
            f"{call.path}): area {area!r} needs {needed!r} access, the agent holds "
            f"{held!r}; {why}"
        )
        if ok:
            text = f"quotaflow policy: {who} may call {method}{target} (area {area!r}, {held!r})"
        return GrantDecision(ok, reason, agent, method, area, needed, held, text)

    if agent is not None and agent_name_problem(agent) is not None:
        return verdict(
            False, "malformed", "none", f"agent name {agent!r}: {agent_name_problem(agent)}"
        )
    if call.problem is not None:
        return verdict(
            False,
            "malformed",
            "none",
            f"the request holds {call.problem}; send it as the API "
            "names it (no encoded separators, dot or empty segments, or method overrides)",
        )
    spec: AgentPolicy | None = policy.for_agent(agent)
    if spec is None:
        if agent is None:
            return verdict(
                False,
                "no_agent",
                "none",
                "name the agent: limiter.agent(name) or quotaflow.agent()",
            )
        return verdict(False, "unknown_agent", "none", "the policy names no such agent")
    if area not in METHODS:
        return verdict(False, "unknown_route", "none", "the route is in no grantable area")
    grant = spec.grant(area)
    held = grant.describe()
    if grant.access == "none":
        return verdict(False, "no_grant", held, f"grant {area!r} in the policy to allow it")
    if needed == "write" and grant.access != "write":
        return verdict(False, "read_only", held, "the grant is read-only")
    if method in grant.deny or (grant.allow and method not in grant.allow):
        return verdict(False, "method_denied", held, f"the grant excludes {method!r}")
    if model and grant.models and not any(_match(model, g) for g in grant.models):
        return verdict(
            False, "model_denied", held, f"{model!r} matches none of {list(grant.models)}"
        )
    if not model and grant.models and call.action == "interactions.create":
        # an interaction run by a Gemini agent names no model: a grant limited to some
        # models does not cover it
        return verdict(
            False, "model_denied", held, f"an interaction names no model of {list(grant.models)}"
        )
    if grant.own and (
        method.startswith(_INTERACTION) or (needed == "write" and method in _CHANGES)
    ):
        resource = target_resource(call)
        if resource is not None and owner != agent:
            whose = f"agent {owner!r}" if owner else "no agent known to quotaflow"
            return verdict(
                False, "not_owner", held, f"{resource} was created by {whose}, not by this agent"
            )
    return verdict(True, "granted", held, "")


def _match(model: str, pattern: str) -> bool:
    plain = model.removeprefix("models/")
    return fnmatchcase(plain, pattern.removeprefix("models/"))
