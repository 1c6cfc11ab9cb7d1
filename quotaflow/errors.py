"""The exception hierarchy of quotaflow.

Every error quotaflow raises derives from :class:`QuotaflowError`, and where a generic handler
should catch it, from a built-in class too::

    QuotaflowError
    ├── ConfigError (ValueError)              bad configuration: a limit, a table, a policy
    │   └── TierTableError                    a tier table file that fails validation
    ├── UnknownModelError (LookupError)       a model with no configured limits
    ├── QuotaError                            a call that cannot be admitted
    │   ├── CannotFitError (ValueError)       the request is larger than a limit: it never fits
    │   ├── QuotaExhaustedError               a calendar quota (RPD, TPD) is spent until it resets
    │   ├── QuotaTimeoutError (TimeoutError)  the wait would end (or ended) after the deadline
    │   └── WouldBlockError                   ``*_nowait`` found no room right now
    ├── BillingError                          the server answered 402: the prepaid balance is empty
    ├── PermitError (RuntimeError)            a permit used out of order (settled twice, ...)
    └── BackendError (ConnectionError)        the shared state store failed

Structured attributes (``.model``, ``.dimension``, ``.retry_after``, ``.resets_at``) let code
react without parsing messages. Messages always name the fix.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BillingError",
    "CannotFitError",
    "ConfigError",
    "MalformedRequestError",
    "PermitError",
    "QuotaError",
    "QuotaExhaustedError",
    "QuotaTimeoutError",
    "QuotaflowError",
    "TierTableError",
    "UnknownModelError",
    "WouldBlockError",
]


class QuotaflowError(Exception):
    """Root of every error quotaflow raises."""


class ConfigError(QuotaflowError, ValueError):
    """Raised when configuration (a limit, a tier table, a policy, an argument) is invalid.

    The message names the field and how to fix it.
    """


class TierTableError(ConfigError):
    """Raised by the tier table loader when a file fails validation.

    Attributes:
        path: the file (or ``"<dict>"``/the environment variable) that failed.
        key: the dotted key that is wrong, when one is known.
    """

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class UnknownModelError(QuotaflowError, LookupError):
    """Raised when a model has no limits in the configured tables.

    Attributes:
        model: the name as the caller wrote it.
        suggestions: close matches among the known names.
    """

    def __init__(self, model: str, suggestions: list[str] | tuple[str, ...] = ()) -> None:
        self.model = model
        self.suggestions = list(suggestions)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(
            f"no limits are configured for model {model!r}.{hint} Add it with "
            "Limiter(overrides={...}) or configure limits for unknown models "
            "(Limiter(unknown_model=...))."
        )

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class QuotaError(QuotaflowError):
    """A call that cannot be admitted (now or ever).

    Attributes:
        model: the model whose quota refused the call.
        dimension: the name of the limit that blocks (``"rpm"``, ``"tpm"``, ``"rpd"``, ...).
        retry_after: seconds from now until the call could fit, if known.
        resets_at: absolute time (the limiter clock's epoch seconds) when capacity returns.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        dimension: str = "",
        retry_after: float | None = None,
        resets_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.dimension = dimension
        self.retry_after = retry_after
        self.resets_at = resets_at


class CannotFitError(QuotaError, ValueError):
    """Raised at once when a request is larger than a limit, so it could never be admitted.

    Attributes:
        requested: the amount asked for on ``dimension``.
        limit: the usable limit of that dimension (after headroom).
    """

    def __init__(self, message: str, *, requested: int, limit: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.requested = requested
        self.limit = limit


class QuotaExhaustedError(QuotaError):
    """Raised at once when a calendar quota (requests or tokens per day) is spent.

    ``resets_at`` is the next reset (midnight America/Los_Angeles for Gemini's day quotas).
    """


class QuotaTimeoutError(QuotaError, TimeoutError):
    """Raised when a wait cannot finish before its deadline.

    Raised at once, without sleeping, when the computed wait already exceeds the deadline
    (``retry_after`` then holds the expected wait), or when the deadline passes while waiting.
    """


class WouldBlockError(QuotaError):
    """Raised by ``acquire_nowait`` when the call does not fit right now.

    ``retry_after`` says when to try again (``None`` when only a release can make room).
    """


class MalformedRequestError(QuotaflowError, ValueError):
    """Raised by a transport made with ``local_errors="raise"`` for a request whose path or
    method no well-formed client sends (a dot segment, an escaped slash, a method override
    that names another method, a model name that is not one); by default the transports answer
    a Gemini-shaped 400 ``INVALID_ARGUMENT`` instead, and nothing is sent.

    Attributes:
        problem: what is wrong with the request.
    """

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class BillingError(QuotaflowError):
    """Raised by the quota transports when Gemini answers 402: the project's prepaid balance
    is empty. Never retried: add funds (Google AI Studio, Billing) and call again.

    Attributes:
        model: the model of the call, if any.
        status: the HTTP status (402).
        message: the server's message (redacted).
    """

    def __init__(self, message: str, *, model: str | None = None, status: int = 402) -> None:
        super().__init__(message)
        self.model = model
        self.status = status
        self.message = message


class PermitError(QuotaflowError, RuntimeError):
    """Raised when a permit is used out of order, e.g. settled twice or used after release."""


class BackendError(QuotaflowError, ConnectionError):
    """Raised when the shared state store (e.g. Redis) fails and the policy says to raise."""
