"""Every error Sluice raises, and how each maps to HTTP and OpenAI's error envelope.

    SluiceError                      root; never raised directly
    ├── ClientError                  the caller's mistake (4xx)
    │   ├── InvalidRequest           400 invalid_request_error (bad JSON, bad field, forbidden field)
    │   ├── AuthenticationFailed     401 invalid_api_key
    │   ├── PermissionDenied         403 permission_denied
    │   ├── NotFound                 404 not_found (unknown path)
    │   ├── ModelNotFound            404 model_not_found
    │   ├── ModelUnpriced            400 model_unpriced (no price and no ceiling: never $0)
    │   ├── MethodNotAllowed         405 method_not_allowed
    │   ├── PayloadTooLarge          413 request_too_large
    │   ├── UpstreamRateLimited      429 rate_limit_exceeded (a provider's 429, passed on)
    │   ├── BudgetExceeded           429 budget_exceeded / user_quota_exceeded (a cap is full; do not retry)
    │   └── LimitReached             429 rate_limit_exceeded / concurrency_limit_exceeded (retry-after)
    ├── UpstreamError                502 upstream_error (provider 5xx, bad answer, unreachable)
    ├── UpstreamTimeout              504 upstream_timeout
    ├── ServiceUnavailable           503 service_unavailable
    │   └── CountersUnavailable      503 counters_unavailable (a capped request cannot be checked: refused)
    ├── VaultError                   500 vault_error (a stored secret cannot be decrypted; shows no key)
    ├── DeliveryFailed               502 alert_delivery_failed (a channel did not take an alert)
    └── ConfigError                  a config file that does not validate (never reaches HTTP)

Each class knows its status, OpenAI ``type`` and ``code``. ``sluice.api.errors`` renders them; no other
module builds an error body.
"""

from __future__ import annotations

from collections.abc import Mapping


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.detail: object = None  # what a watcher may need about it (a refusal's counter), never rendered


class ClientError(SluiceError):
    """A request the client must change before it can succeed."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(ClientError):
    """The body or a parameter is malformed, of the wrong type, or not allowed."""


class AuthenticationFailed(ClientError):
    """Missing, unknown, revoked or expired API key. The message never depends on the key given."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    """The key is valid but may not use this model or route."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ClientError):
    """No such path."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(ClientError):
    """No model alias with this name is configured."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ModelUnpriced(ClientError):
    """No price is known for the model and no ceiling is configured: it is refused, never charged $0."""

    status = 400
    type = "invalid_request_error"
    code = "model_unpriced"


class MethodNotAllowed(ClientError):
    """The path exists but not for this HTTP method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    """The request body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamRateLimited(ClientError):
    """The provider said 429; its ``retry-after`` travels with the error."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExhausted(UpstreamRateLimited):
    """Every deployment that could serve is held out by its provider's quota (a free tier's day used up,
    credit spent) until a known time; nothing was sent."""

    code = "provider_quota_exhausted"


class BudgetExceeded(ClientError):
    """A spend, token or request cap of some scope has no room for this request; retrying will not help
    until the period resets (``x-should-retry: false``)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class LimitReached(ClientError):
    """A rate or concurrency limit is full right now; ``retry-after`` says when to try again."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(SluiceError):
    """The provider failed (5xx, overloaded, unreadable answer, connection refused)."""

    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(SluiceError):
    """The provider did not answer within a deadline (connect, first byte, idle or total)."""

    status = 504
    type = "api_error"
    code = "upstream_timeout"


class ServiceUnavailable(SluiceError):
    """Sluice cannot serve right now (starting, shutting down, store unreachable)."""

    status = 503
    type = "api_error"
    code = "service_unavailable"


class CountersUnavailable(ServiceUnavailable):
    """The store that enforces a cap is unreachable: a capped request fails closed, never admitted blind."""

    code = "counters_unavailable"


class VaultError(SluiceError):
    """A sealed secret could not be decoded or decrypted, or a KEK is unusable. Never shows key material."""

    status = 500
    code = "vault_error"


class DeliveryFailed(SluiceError):
    """An alert channel did not accept an alert (retried in the background; shown by the test command)."""

    status = 502
    type = "server_error"
    code = "alert_delivery_failed"


class ConfigError(SluiceError):
    """A configuration that does not validate; ``problems`` lists each with its line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]
