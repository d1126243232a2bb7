"""The tokens seen lately whose scopes the proxy has not learned.

Pipedrive has no token introspection: the proxy knows a token's scopes only from an exchange
it saw. After a restart with a store that does not keep them, or the first rollout in front of
an app, the app's tokens are unknown until the app refreshes them through the proxy. This
count (``scope_proxy_unknown_tokens``, the live report's ``unknown_tokens``) says how many are
still in that state: refused as unknown, or let through only on the app's declared scopes
(``unknown_tokens: app_scopes``, a warm-up).
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.stores import Clock

LIMIT = 10_000  # tokens remembered at most (the oldest forgotten first): a flood stays bounded
WINDOW = 3600.0  # seconds a token is counted after it was last seen (an access token's life)


class UnknownTokens:
    """Token digests by when each was last seen unknown, oldest first."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._seen)

    def saw(self, digest: str) -> None:
        seen = self._seen
        seen[digest] = self._clock()
        seen.move_to_end(digest)
        if len(seen) > LIMIT:
            seen.popitem(last=False)

    def learned(self, digest: str) -> None:
        self._seen.pop(digest, None)

    def count(self) -> int:
        """Tokens seen unknown within the window and not learned since."""
        horizon = self._clock() - WINDOW
        seen = self._seen
        while seen and next(iter(seen.values())) < horizon:
            seen.popitem(last=False)
        return len(seen)
