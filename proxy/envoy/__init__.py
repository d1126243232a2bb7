"""Envoy in front: ``bootstrap`` prints the Envoy v3 bootstrap that checks every API call with
the proxy (``ext_authz``) and forwards what it allows. The check itself is served by the HTTP
edge (``proxy.http.app``), with the same decision as forwarding."""
