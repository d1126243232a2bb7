"""Take the report page's screenshot the staging guide shows (docs/images/report.png).

    python tools/screenshot.py

It starts a fake Pipedrive and the proxy in report mode on loopback ports, makes the calls of a
small app's staging run (in scope, out of scope, a v1 endpoint out of support, with a budget),
and has headless Chromium (Debian's ``chromium``) save ``/_proxy/report.html`` as a PNG. Not a
test: run it again when the report page changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "report.png"
TOKENS = {"crm-sync": ["deals:read", "contacts:read"], "importer": ["deals:full"]}


class Pipedrive(BaseHTTPRequestHandler):
    """Answers every call as Pipedrive would, with its budget headers."""

    def _answer(self) -> None:
        status, body = 200, json.dumps({"success": True, "data": {"id": 1}}).encode()
        if self.path.startswith("/v1/activities"):  # out of the token's scopes, as Pipedrive says
            status, body = 403, json.dumps({"success": False, "error": "Scope and URL mismatch",
                                            "errorCode": 403}).encode()  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-daily-ratelimit-token-limit", "60000")
        self.send_header("x-daily-ratelimit-token-remaining", "41250")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *_: object) -> None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("tools/screenshot.py: chromium not found (apt-get install -y chromium)")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Pipedrive)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="screenshot-") as folder:
        config = Path(folder) / "staging.yaml"
        config.write_text(yaml.safe_dump({
            "listen": {"host": "127.0.0.1", "port": port},
            "upstream": {"api_url": f"http://127.0.0.1:{upstream.server_port}"},
            "mode": "report",
            "app_scopes": ["base", "deals:full", "contacts:read", "activities:full"],
            "tokens": [{"name": name, "sha256": hashlib.sha256(name.encode()).hexdigest(),
                        "scopes": scopes, "company": "acme.pipedrive.com"}
                       for name, scopes in TOKENS.items()],
            "budget": {"mode": "report", "share": 0.5},
            "logging": {"format": "json", "level": "warning"},
        }))  # fmt: skip
        proxy = subprocess.Popen(  # noqa: S603 - this interpreter, this repository
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)], cwd=ROOT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{base}/_proxy/health", timeout=1)  # noqa: S310
                    break
                except OSError:
                    time.sleep(0.1)
            calls = [
                ("crm-sync", "GET", "/v1/deals/7", 12), ("crm-sync", "GET", "/api/v2/deals", 30),
                ("crm-sync", "GET", "/v1/persons/3", 8), ("crm-sync", "GET", "/v1/activities", 4),
                ("importer", "POST", "/api/v2/deals", 9),
                ("importer", "DELETE", "/api/v2/deals/7", 2),
                ("importer", "GET", "/v1/deals/find?term=acme", 3),
            ]  # fmt: skip
            for token, method, path, count in calls:
                for _ in range(count):
                    request = urllib.request.Request(  # noqa: S310 - loopback, http
                        base + path, method=method, headers={"Authorization": f"Bearer {token}"},
                        data=b"{}" if method == "POST" else None,
                    )  # fmt: skip
                    if method == "POST":
                        request.add_header("Content-Type", "application/json")
                    with contextlib.suppress(urllib.error.HTTPError):  # Pipedrive's own 403
                        urllib.request.urlopen(request, timeout=5).read()  # noqa: S310
            time.sleep(1.5)  # the counts reach the report's store
            OUT.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(  # noqa: S603 - Debian's chromium, on the proxy's own page
                [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1280,1700", f"--screenshot={OUT}", f"{base}/_proxy/report.html"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            upstream.shutdown()
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
