"""``quotaflow gateway``: serve the gateway, and manage its agent tokens.

Usage::

    quotaflow gateway --config gateway.toml [--host H] [--port N]
    quotaflow gateway token create --config gateway.toml --agent NAME [--hash sha256|scrypt]
    quotaflow gateway token list --config gateway.toml [--json]
    quotaflow gateway token revoke --config gateway.toml TOKEN_ID
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import threading
from dataclasses import replace

from quotaflow.errors import QuotaflowError

__all__ = ["run_cli"]


def _fail(msg: str, code: int = 1) -> int:
    print(f"quotaflow gateway: {msg}", file=sys.stderr)
    return code


def _token(argv: list[str]) -> int:
    from quotaflow.gateway._config import load_gateway_config
    from quotaflow.gateway._tokens import TokenFile, new_token

    parser = argparse.ArgumentParser(
        prog="quotaflow gateway token",
        description="Manage agent tokens: the tokens file holds hashes only, and a running "
        "gateway picks up every change at once.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a token for an agent (shown once)")
    create.add_argument("--config", required=True)
    create.add_argument("--agent", required=True)
    create.add_argument("--hash", choices=("sha256", "scrypt"), default="sha256")
    lst = sub.add_parser("list", help="the tokens in force (ids, agents, times; never tokens)")
    lst.add_argument("--config", required=True)
    lst.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a token by its id (at once)")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("token_id")
    args = parser.parse_args(argv)
    config = load_gateway_config(args.config)
    tokens = TokenFile(config.tokens_file)
    if args.action == "create":
        if config.policy.for_agent(args.agent) is None:
            return _fail(
                f"agent {args.agent!r} is not in the policy of {args.config} (and it has no "
                f"[default]): add [agents.{args.agent}.grants] first"
            )
        token, entry = new_token(args.agent, args.hash)
        tokens.add(entry)
        print(token)
        print(
            f"token {entry.id} for agent {entry.agent!r}: shown once, only its hash is kept "
            f"(in {tokens.path}). Agents use it as their API key.",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        entries = tokens.load()
        if args.json:
            print(json.dumps([{"id": e.id, "agent": e.agent, "created": e.created}
                              for e in entries], indent=2))  # fmt: skip
            return 0
        print(f"{'id':<14} {'agent':<24} created")
        for e in entries:
            print(f"{e.id:<14} {e.agent:<24} {e.created}")
        return 0
    gone = tokens.revoke(args.token_id)
    if gone is None:
        return _fail(f"no token with id {args.token_id!r} in {tokens.path} (see 'token list')")
    print(f"revoked token {gone.id} of agent {gone.agent!r}")
    return 0


def _serve(argv: list[str]) -> int:
    from quotaflow.gateway._app import Gateway
    from quotaflow.gateway._config import load_gateway_config
    from quotaflow.gateway._serve import run

    parser = argparse.ArgumentParser(
        prog="quotaflow gateway",
        description="Serve Gemini's REST surface to agents that hold gateway tokens; the "
        "gateway alone holds the Gemini key. 'quotaflow gateway token --help' manages tokens.",
    )
    parser.add_argument("--config", required=True, help="the gateway's TOML file")
    parser.add_argument("--host", help="listen here (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen on this port (overrides gateway.port)")
    args = parser.parse_args(argv)
    config = load_gateway_config(args.config)
    if args.host:
        config = replace(config, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            return _fail(f"--port {args.port}: give a port in 0..65535 (0: any free one)", 2)
        config = replace(config, port=args.port)
    gateway = Gateway(config)
    # log lines are formatted and written by a thread of their own: the event loop never
    # waits for stderr
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(logging.Formatter("%(message)s"))
    writer = _Batched(out)
    root = logging.getLogger()
    root.addHandler(writer)
    root.setLevel(logging.INFO)
    try:
        run(gateway)
    finally:
        writer.close()
        root.removeHandler(writer)
    return 0


class _Batched(logging.Handler):
    """Keeps each record (a list append: no formatting, no thread wake-up in the event loop)
    for a writer thread that formats and writes what came every ``interval`` seconds."""

    def __init__(self, target: logging.Handler, interval: float = 0.05) -> None:
        super().__init__()
        self._target = target
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="quotaflow-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._pending.append(record)

    def handle(self, record: logging.LogRecord) -> bool:  # no lock: deque appends are atomic
        if self.filter(record):
            self._pending.append(record)
            return True
        return False

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            self._target.handle(pending.popleft())
        self._target.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                self._drain()
        self._drain()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        super().close()


def run_cli(argv: list[str]) -> int:
    """Run ``quotaflow gateway ...``; errors are one line, never a traceback."""
    try:
        if argv and argv[0] == "token":
            return _token(argv[1:])
        return _serve(argv)
    except QuotaflowError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt:
        return 130
