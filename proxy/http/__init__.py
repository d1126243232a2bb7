"""The HTTP edge: aiohttp's server and client around the core.

``server`` (aiohttp's server, bodies never inflated, the parser's refusals answered here) hands
each request to ``observe`` (one log event, metrics and report entry per request) and ``app``
(the handler: the API, the OAuth endpoints, ``internal`` for ``/_proxy/``); ``forward`` sends an
allowed call upstream and streams the answer back; ``token_exchange`` learns scopes from the
OAuth exchange; ``recorder`` counts calls into the store for the report; ``serving`` is a
worker's life and the supervisor of several.
"""
