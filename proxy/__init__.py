"""pipedrive-scope-proxy: enforce Pipedrive OAuth scopes in front of the Pipedrive API."""

__version__ = "0.1.0"
