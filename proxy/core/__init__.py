"""The pure decision core: plain values in, plain values out; no aiohttp, no I/O.

In pipeline order: ``canonical`` (the one reading of a request, or a refusal), ``credentials``
(the one credential, as a digest), ``catalog`` and ``matching`` (the endpoint called and the
scopes that accept it), ``decision`` (``authorize``: would Pipedrive accept the call?), with
``reasons`` and ``errors`` (why a request ended as it did, and the refusals' envelope) and
``oauth`` (what a token exchange teaches). The server, Envoy's check, ``explain`` and the report
all decide with these.
"""
