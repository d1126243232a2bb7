"""Why a request ended as it did: the one vocabulary of logs, metrics, reports and refusals."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # A decided call: a token was resolved and the catalogue consulted.
    IN_SCOPE = "in_scope"
    OUT_OF_SCOPE = "out_of_scope"
    OUTSIDE_APP_SCOPES = "outside_app_scopes"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    UNKNOWN_ENDPOINT_ALLOWED = "unknown_endpoint_allowed"
    # Refused before a decision could be made.
    AMBIGUOUS_REQUEST = "ambiguous_request"
    MALFORMED_REQUEST = "malformed_request"
    MULTIPLE_CREDENTIALS = "multiple_credentials"
    MISSING_CREDENTIAL = "missing_credential"
    UNSUPPORTED_CREDENTIAL = "unsupported_credential"
    UNKNOWN_TOKEN = "unknown_token"
    API_TOKEN_NOT_SCOPED = "api_token_not_scoped"
    NOT_FOUND = "not_found"
    WRONG_LISTENER = "wrong_listener"  # an API call or Envoy's check sent to the admin listener
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    STORE_UNAVAILABLE = "store_unavailable"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    HEADER_TIMEOUT = "header_timeout"
    INTERNAL_ERROR = "internal_error"
    CLIENT_GONE = "client_gone"  # the client left before the decision (Envoy's check timeout)
    # Envoy's own answer when the proxy did not answer its check (the proxy never logs it).
    AUTHORIZER_UNAVAILABLE = "authorizer_unavailable"
    # Refused by the budget governor after the scope check let the call through.
    BUDGET_EXHAUSTED = "budget_exhausted"  # the day's share, or what Pipedrive says is left
    BURST_LIMIT = "burst_limit"  # the token's calls in a 2-second span
    # Failures after the call was let through.
    REQUEST_TIMEOUT = "request_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    OAUTH_RESPONSE_UNREADABLE = "oauth_response_unreadable"
    # Not scope decisions at all.
    OAUTH_PASSTHROUGH = "oauth_passthrough"
    OAUTH_REDIRECT = "oauth_redirect"  # GET /oauth/authorize: the browser sent to Pipedrive
    INTERNAL = "internal"  # the proxy's own endpoints: not traffic, not logged


# Refusals before the scope check could be made: counted in the report apart, by reason, so
# that a storm of unknown tokens or malformed calls shows.
BEFORE_DECISION = frozenset(
    {
        Reason.AMBIGUOUS_REQUEST,
        Reason.MALFORMED_REQUEST,
        Reason.MULTIPLE_CREDENTIALS,
        Reason.MISSING_CREDENTIAL,
        Reason.UNSUPPORTED_CREDENTIAL,
        Reason.UNKNOWN_TOKEN,
        Reason.API_TOKEN_NOT_SCOPED,
        Reason.METHOD_NOT_ALLOWED,
        Reason.WRONG_LISTENER,
        Reason.REQUEST_TOO_LARGE,
        Reason.UNSUPPORTED_MEDIA_TYPE,
        Reason.STORE_UNAVAILABLE,
    }
)

# Requests that are not API calls at all: no Pipedrive prefix and none of the proxy's own
# endpoints (``GET /``, ``/favicon.ico``, a load balancer's probe, a mistyped ``/_proxy/...``).
# The report counts them apart, and they never fail ``report --fail-on denied``.
NOT_API_CALLS = frozenset({Reason.NOT_FOUND})

# Calls in scope that the budget governor refused: counted in the report's budget section.
THROTTLED = frozenset({Reason.BUDGET_EXHAUSTED, Reason.BURST_LIMIT})

DECIDED = frozenset(
    {
        Reason.IN_SCOPE,
        Reason.OUT_OF_SCOPE,
        Reason.OUTSIDE_APP_SCOPES,
        Reason.UNKNOWN_ENDPOINT,
        Reason.UNKNOWN_ENDPOINT_ALLOWED,
    }
)
