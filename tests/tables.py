"""Tables and small helpers that several test modules share (test modules import none of each
other): Pipedrive's own 403 body, a request path for a template, the compose stacks."""

from __future__ import annotations

import re

# Pipedrive's "Scope and URL mismatch", as the proxy must answer it, less its own details.
PIPEDRIVE_403 = {
    "success": False,
    "error": "Scope and URL mismatch",
    "errorCode": 403,
    "error_info": "Please check developers.pipedrive.com",
}


def concrete(template: str) -> str:
    """A request path for a template: each parameter becomes a plausible id."""
    return re.sub(r"\{[^{}]+\}", "4711", template)


# The compose files of each staging stack (README, "docker compose: a staging stack").
STACKS = {
    "report": ["docker-compose.yml"],
    "enforce": ["docker-compose.yml", "docker-compose.enforce.yml"],
}
# What the example app prints in report mode (the README shows these lines).
APP_LINES = [
    "GET /v1/users/me -> 200 (allow)",
    "GET /api/v2/deals -> 200 (allow)",
    "GET /api/v2/activities -> 200 (report)",
]
