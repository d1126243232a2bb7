"""The official Pipedrive Node client, pointed at the proxy for OAuth and API alike.

It authorizes (the proxy learns the token's scopes from the exchange), calls v1 and v2, is
refused out of scope exactly as Pipedrive would refuse it, and keeps calling through the proxy
after the exchange because ``api_domain`` now names the proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.docs import DOCS
from tests.fakes import FakeOAuth, FakePipedrive

pytestmark = pytest.mark.slow

CLIENT_VERSION = "33.7.0"  # the client the README's snippet is written for
SCRIPT = r"""
const { v1, v2 } = require("pipedrive");
const proxy = process.argv[2];
const results = {};

async function attempt(name, call) {
  try {
    await call();
    results[name] = 200;
  } catch (error) {
    results[name] = error.errorCode || error.status || String(error);
  }
}

(async () => {
  const params = { clientId: "ci", clientSecret: "cs", redirectUri: "https://app.example/cb", host: proxy };
  const oauth1 = new v1.OAuth2Configuration(params);
  await oauth1.authorize("code-for-v1");
  const oauth2 = new v2.OAuth2Configuration(params);
  await oauth2.authorize("code-for-v2");
  results.basePaths = [oauth1.basePath, oauth2.basePath];
  const config1 = new v1.Configuration({ accessToken: oauth1.getAccessToken, basePath: oauth1.basePath });
  const config2 = new v2.Configuration({ accessToken: oauth2.getAccessToken, basePath: oauth2.basePath });
  await attempt("v1 GET /users/me", () => new v1.UsersApi(config1).getCurrentUser());
  await attempt("v1 GET /activityFields", () => new v1.ActivityFieldsApi(config1).getActivityFields());
  await attempt("v2 GET /deals", () => new v2.DealsApi(config2).getDeals());
  await attempt("v2 GET /activityFields", () => new v2.ActivityFieldsApi(config2).getActivityFields());
  await attempt("v2 DELETE /deals/{id}", () => new v2.DealsApi(config2).deleteDeal({ id: 7 }));
  await oauth1.revokeToken("access_token");
  await attempt("v1 GET /users/me after revoke", () => new v1.UsersApi(config1).getCurrentUser());
  console.log(JSON.stringify(results));
})().catch((error) => { console.error(String(error)); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = "node and npm are not installed (apt-get install -y nodejs npm)"
        if os.environ.get("REQUIRE_NODE"):
            pytest.fail(missing)
        pytest.skip(f"{missing}: the official Node client cannot be driven")
    folder = tmp_path_factory.mktemp("node-client")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", f"pipedrive@{CLIENT_VERSION}"],
        cwd=folder, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (folder / "drive.js").write_text(SCRIPT)
    return folder


async def run_node(folder: Path, script: str, *args: str) -> bytes:
    """Run a script with Node in the folder the client is installed in; what it printed."""
    node = shutil.which("node")
    assert node is not None
    process = await asyncio.create_subprocess_exec(
        node, script, *args, cwd=folder,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    return out


async def test_official_node_client_authorizes_and_calls_through_the_proxy(
    node_client: Path, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="base,deals:read,activities:read").respond
    client = await make_proxy()
    proxy_url = f"http://{client.host}:{client.port}"
    out = await run_node(node_client, "drive.js", proxy_url)
    results = json.loads(out)
    assert results.pop("basePaths") == [f"{proxy_url}/api/v1", f"{proxy_url}/api/v2"]
    assert results == {
        "v1 GET /users/me": 200,
        "v1 GET /activityFields": 200,
        "v2 GET /deals": 200,
        "v2 GET /activityFields": 403,  # v2 accepts only admin
        "v2 DELETE /deals/{id}": 403,
        # The client encodes the access token twice in its revoke form; the OAuth server reads
        # it decoded once, and the proxy forgets exactly what the server reads: not this token.
        "v1 GET /users/me after revoke": 200,
    }
    assert [(r.method, r.raw_path.split("?")[0]) for r in upstream.received] == [
        ("POST", "/oauth/token"),
        ("POST", "/oauth/token"),
        ("GET", "/api/v1/users/me"),
        ("GET", "/api/v1/activityFields"),
        ("GET", "/api/v2/deals"),
        ("POST", "/oauth/revoke"),
        ("GET", "/api/v1/users/me"),
    ]
    assert all(
        r.header("Authorization")[0].startswith("Bearer v1u:") for r in upstream.received[2:5]
    )


def readme_snippet() -> str:
    readme = DOCS
    [block] = re.findall(r"^```js\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    return str(block)


async def test_the_readme_node_snippet_runs_as_written(
    node_client: Path, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The README's snippet, verbatim but for the proxy's address, with the pinned client."""
    upstream.respond = FakeOAuth(scope="base,deals:read").respond
    client = await make_proxy()
    proxy_url = f"http://{client.host}:{client.port}"
    snippet = readme_snippet()
    script = snippet.replace('"http://localhost:8080"', json.dumps(proxy_url))
    assert script != snippet, "the snippet names the proxy as http://localhost:8080"
    script += (
        'main("ci", "cs", "https://app.example/cb", "a-code")\n'
        "  .then((answer) => console.log(JSON.stringify({ success: answer.success })))\n"
        "  .catch((error) => { console.error(String(error)); process.exit(1); });\n"
    )
    (node_client / "readme.js").write_text(script)
    out = await run_node(node_client, "readme.js")
    assert json.loads(out) == {"success": True}
    assert [(r.method, r.raw_path.split("?")[0]) for r in upstream.received] == [
        ("POST", "/oauth/token"),
        ("GET", "/api/v2/deals"),
    ]
    assert upstream.received[1].header("Authorization")[0].startswith("Bearer v1u:")
