"""The conditions under which the proxy answers by itself, each with its HTTP status.

Every refusal is one of these exceptions; ``envelope`` is the body of each, in Pipedrive's error
envelope, and ``proxy.http.responses`` makes that an HTTP response (Envoy's bootstrap uses the body
too). Nothing here imports aiohttp: the decision core raises them too.
Messages never quote the request (a header or parameter may hold a token): they name the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from proxy.core.reasons import Reason

if TYPE_CHECKING:
    from proxy.core.decision import Decision


class ProxyError(Exception):
    """A request the proxy answers itself. ``reason`` is the stable name used in logs/metrics.

    ``decision``: the decision of the call it answers, when one was made (a refusal of the
    call, or a failure after it was let through); None for a request refused before it could
    be read as a call (an ambiguous target, a path outside the API)."""

    status: ClassVar[int] = 500
    reason: Reason = Reason.INTERNAL_ERROR
    error: ClassVar[str] = "internal proxy error"
    error_info: ClassVar[str | None] = "Please check developers.pipedrive.com"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.error)
        self.detail = detail
        self.decision: Decision | None = None

    @property
    def message(self) -> str:
        """The envelope's ``error`` text: the condition, then what exactly was wrong."""
        return f"{self.error}: {self.detail}" if self.detail else self.error


class AmbiguousRequest(ProxyError):
    """The request could be read more than one way; the proxy refuses instead of guessing."""

    status = 400
    reason = Reason.AMBIGUOUS_REQUEST
    error = "Bad request"


class MalformedRequest(AmbiguousRequest):
    """Refused by the HTTP parser itself, before the proxy could read the request."""

    reason = Reason.MALFORMED_REQUEST
    error = "Bad request: malformed HTTP request"


class MultipleCredentials(ProxyError):
    status = 400
    reason = Reason.MULTIPLE_CREDENTIALS
    error = "Bad request: more than one credential"


class MissingCredential(ProxyError):
    status = 401
    reason = Reason.MISSING_CREDENTIAL
    error = "unauthorized access"

    @property
    def message(self) -> str:
        return self.error  # Pipedrive's exact text; the detail goes in ``scope_proxy``


class UnknownToken(MissingCredential):
    reason = Reason.UNKNOWN_TOKEN


class UnsupportedCredential(MissingCredential):
    reason = Reason.UNSUPPORTED_CREDENTIAL


class NotFound(ProxyError):
    status = 404
    reason = Reason.NOT_FOUND
    error = "Not found"


class WrongListener(NotFound):
    """An API call, or Envoy's check of one, sent to the admin listener: refused (404) and
    counted as a refused call, not as a stray request (a misdirected ``--authz``, say)."""

    reason = Reason.WRONG_LISTENER


class UnknownEndpoint(ProxyError):
    """A path under an API prefix that no catalogue entry matches, or a known path with a
    method it does not take: the app has a typo, not a scope to ask for. ``endpoint`` is the
    call's shape (``PATCH /v1/deals/{id}``); ``methods`` those the path takes, if any."""

    status = 404
    reason = Reason.UNKNOWN_ENDPOINT
    error = "Unknown endpoint"

    def __init__(self, endpoint: str | None, methods: Iterable[str] = ()) -> None:
        self.endpoint = endpoint
        self.methods = tuple(methods)
        taken = ", ".join(self.methods)
        super().__init__(
            f"this path takes {taken}, not the method called"
            if self.methods
            else "no Pipedrive API endpoint has this path"
        )


class MethodNotAllowed(ProxyError):
    """A method the path does not take; ``allowed`` are those it does (the ``Allow`` header)."""

    status = 405
    reason = Reason.METHOD_NOT_ALLOWED
    error = "Method not allowed"

    def __init__(self, allowed: Iterable[str], detail: str | None = None) -> None:
        self.allowed = tuple(allowed)
        super().__init__(detail or f"this path takes {', '.join(self.allowed) or 'no method'}")


class OutOfScope(ProxyError):
    """None of the token's scopes (or, with ``app_scopes``, none of the app's) accepts the call."""

    status = 403
    reason = Reason.OUT_OF_SCOPE
    error = "Scope and URL mismatch"

    def __init__(
        self,
        reason: Reason,
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
    reason = Reason.API_TOKEN_NOT_SCOPED
    error = (
        "Personal API tokens are not scoped: they carry all of the user's rights, "
        "so this proxy refuses them (api_tokens: deny)"
    )


class RequestTimeout(ProxyError):
    """The client stopped sending its body: the call is cut off, upstream included."""

    status = 408
    reason = Reason.REQUEST_TIMEOUT
    error = "Request timeout"


class HeaderTimeout(RequestTimeout):
    """The client did not send a whole request head in time."""

    reason = Reason.HEADER_TIMEOUT


class TooManyConnections(ProxyError):
    status = 503
    reason = Reason.TOO_MANY_CONNECTIONS
    error = "Service unavailable: too many connections"


class RequestTooLarge(ProxyError):
    status = 413
    reason = Reason.REQUEST_TOO_LARGE
    error = "Request entity too large"


class UnsupportedMediaType(ProxyError):
    status = 415
    reason = Reason.UNSUPPORTED_MEDIA_TYPE
    error = "Unsupported media type"


class AuthorizerUnavailable(ProxyError):
    """Envoy's own answer when its check of a call got no answer from the proxy (never the
    proxy's: see ``proxy.envoy.bootstrap``)."""

    status = 503
    reason = Reason.AUTHORIZER_UNAVAILABLE
    error = "Service unavailable"


class StoreUnavailable(ProxyError):
    status = 503
    reason = Reason.STORE_UNAVAILABLE
    error = "token store unavailable"


class BudgetExceeded(ProxyError):
    """A call in scope that the budget governor refuses: answered as Pipedrive answers a
    company whose daily budget is spent (its exact body, no ``error_info``), with the company,
    what is left and when it resets under ``scope_proxy``, and ``Retry-After``."""

    status = 429
    reason = Reason.BUDGET_EXHAUSTED
    error = "daily request budget exceeded"
    error_info = None

    def __init__(
        self,
        reason: Reason,
        retry_after: int,
        company: str | None,
        left: int | None,
        resets_at: str | None,
        detail: str,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry_after = retry_after
        self.company = company
        self.left = left
        self.resets_at = resets_at

    @property
    def message(self) -> str:
        return self.error  # Pipedrive's exact text; the detail goes in ``scope_proxy``


class UpstreamFailure(ProxyError):
    """The call was let through and the upstream failed it. ``kind`` labels the metric
    (``connect``, ``timeout``, ``disconnect``), or is None for a failure of another sort."""

    kind: str | None = None

    def __init__(self, detail: str | None = None, kind: str | None = None) -> None:
        super().__init__(detail)
        self.kind = kind


class UpstreamUnavailable(UpstreamFailure):
    status = 502
    reason = Reason.UPSTREAM_UNAVAILABLE
    error = "Bad gateway: upstream unreachable"


class UpstreamUnreadable(UpstreamFailure):
    """A successful OAuth answer the proxy cannot read: passing it on would go around it."""

    status = 502
    reason = Reason.OAUTH_RESPONSE_UNREADABLE
    error = "Bad gateway: unreadable OAuth answer"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    reason = Reason.UPSTREAM_TIMEOUT
    error = "Gateway timeout: upstream did not answer in time"


DECISION_HEADER = "X-Scope-Proxy-Decision"
ERROR_INFO = "Please check developers.pipedrive.com"


def envelope(error: ProxyError) -> dict[str, Any]:
    """The JSON body for a refusal: Pipedrive's keys first, the proxy's own under scope_proxy."""
    body: dict[str, Any] = {
        "success": False,
        "error": error.message,
        "errorCode": error.status,
    }
    if error.error_info is not None:
        body["error_info"] = error.error_info
    details: dict[str, Any] = {"reason": str(error.reason)}
    if isinstance(error, OutOfScope):
        details["endpoint"] = error.endpoint
        details["accepted_scopes"] = error.accepted_scopes
        details["granted_scopes"] = error.granted_scopes
    elif isinstance(error, BudgetExceeded):
        details["company"] = error.company
        details["left"] = error.left
        details["resets_at"] = error.resets_at
        details["retry_after"] = error.retry_after
    elif isinstance(error, UnknownEndpoint):
        details["endpoint"] = error.endpoint
        if error.methods:
            details["methods"] = list(error.methods)
    if error.detail:
        details["detail"] = error.detail
    body["scope_proxy"] = details
    return body
