"""The conditions under which the proxy answers by itself, each with its HTTP status.

Every refusal is one of these exceptions; ``proxy.responses`` renders them, in one place, in
Pipedrive's error envelope. No module imports aiohttp here: the decision core raises them too.
"""

from __future__ import annotations

from collections.abc import Iterable


class ProxyError(Exception):
    """A request the proxy answers itself. ``reason`` is the stable name used in logs/metrics."""

    status = 500
    reason = "internal_error"
    error = "internal proxy error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.error)
        self.detail = detail

    @property
    def message(self) -> str:
        """The envelope's ``error`` text: the condition, then what exactly was wrong."""
        return f"{self.error}: {self.detail}" if self.detail else self.error


class AmbiguousRequest(ProxyError):
    """The request could be read more than one way; the proxy refuses instead of guessing."""

    status = 400
    reason = "ambiguous_request"
    error = "Bad request"


class MalformedRequest(AmbiguousRequest):
    """Refused by the HTTP parser itself, before the proxy could read the request."""

    reason = "malformed_request"
    error = "Bad request: malformed HTTP request"


class MultipleCredentials(ProxyError):
    status = 400
    reason = "multiple_credentials"
    error = "Bad request: more than one credential"


class MissingCredential(ProxyError):
    status = 401
    reason = "missing_credential"
    error = "unauthorized access"

    @property
    def message(self) -> str:
        return self.error  # Pipedrive's exact text; the detail goes in ``scope_proxy``


class UnknownToken(MissingCredential):
    reason = "unknown_token"


class UnsupportedCredential(MissingCredential):
    reason = "unsupported_credential"


class NotFound(ProxyError):
    status = 404
    reason = "not_found"
    error = "Not found"


class MethodNotAllowed(ProxyError):
    status = 405
    reason = "method_not_allowed"
    error = "Method not allowed"


class OutOfScope(ProxyError):
    """None of the token's scopes (or, with ``app_scopes``, none of the app's) accepts the call."""

    status = 403
    reason = "out_of_scope"
    error = "Scope and URL mismatch"

    def __init__(
        self,
        reason: str,
        endpoint: str | None,
        accepted_scopes: Iterable[str],
        granted_scopes: Iterable[str],
        detail: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.endpoint = endpoint
        self.accepted_scopes = sorted(accepted_scopes)
        self.granted_scopes = sorted(granted_scopes)

    @property
    def message(self) -> str:
        return self.error  # Pipedrive's exact text


class ApiTokenNotScoped(ProxyError):
    status = 403
    reason = "api_token_not_scoped"
    error = (
        "Personal API tokens are not scoped: they carry all of the user's rights, "
        "so this proxy refuses them (api_tokens: deny)"
    )


class RequestTooLarge(ProxyError):
    status = 413
    reason = "request_too_large"
    error = "Request entity too large"


class UnsupportedMediaType(ProxyError):
    status = 415
    reason = "unsupported_media_type"
    error = "Unsupported media type"


class StoreUnavailable(ProxyError):
    status = 503
    reason = "store_unavailable"
    error = "token store unavailable"


class UpstreamUnavailable(ProxyError):
    status = 502
    reason = "upstream_unavailable"
    error = "Bad gateway: upstream unreachable"


class UpstreamUnreadable(UpstreamUnavailable):
    """A successful OAuth answer the proxy cannot read: passing it on would go around it."""

    reason = "oauth_response_unreadable"
    error = "Bad gateway: unreadable OAuth answer"


class UpstreamTimeout(ProxyError):
    status = 504
    reason = "upstream_timeout"
    error = "Gateway timeout: upstream did not answer in time"
