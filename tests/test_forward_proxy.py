"""Which forward proxy an upstream call goes through: the environment as curl and requests
read it, or ``upstream.proxy`` over it (tinyproxy in the loop: tests/test_egress.py)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxy.config import ConfigError, load_config
from proxy.http.forward import forward_proxy
from tests.processes import write_config

PIPEDRIVE = URL("https://api.pipedrive.com")
LOCAL = URL("http://127.0.0.1:8000")


@pytest.mark.parametrize(
    ("configured", "url", "env", "expected"),
    [
        (None, PIPEDRIVE, {"HTTPS_PROXY": "http://egress:3128"}, "http://egress:3128"),
        (None, PIPEDRIVE, {"HTTP_PROXY": "http://egress:3128"}, None),  # http's only
        (None, LOCAL, {"HTTP_PROXY": "http://egress:3128"}, "http://egress:3128"),
        (None, PIPEDRIVE, {"ALL_PROXY": "http://all:3128"}, "http://all:3128"),
        (None, PIPEDRIVE, {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1"},
         "http://lower:1"),  # the lower-case spelling wins, as in curl
        (None, PIPEDRIVE, {"HTTPS_PROXY": "egress:3128"}, "http://egress:3128"),
        (None, PIPEDRIVE, {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": ".pipedrive.com"},
         None),
        (None, PIPEDRIVE, {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "*"}, None),
        (None, LOCAL, {"HTTP_PROXY": "http://egress:3128", "no_proxy": "127.0.0.1"}, None),
        ("none", PIPEDRIVE, {"HTTPS_PROXY": "http://egress:3128"}, None),
        ("http://mine:8080", PIPEDRIVE, {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "*"},
         "http://mine:8080"),  # configured: over the environment, NO_PROXY included
        (None, PIPEDRIVE, {}, None),
    ],
)  # fmt: skip
def test_the_proxy_for_a_call(
    configured: str | None, url: URL, env: dict[str, str], expected: str | None
) -> None:
    proxy, auth = forward_proxy(configured, url, env)
    assert (str(proxy) if proxy is not None else None, auth) == (expected, None)


def test_a_proxys_user_and_password_become_its_authorization() -> None:
    proxy, headers = forward_proxy("http://ops:s%40cret@egress:3128", PIPEDRIVE, {})
    assert str(proxy) == "http://egress:3128"
    assert headers == {"Proxy-Authorization": aiohttp.encode_basic_auth("ops", "s@cret")}


@pytest.mark.parametrize(
    ("value", "problem"),
    [("https://egress:3128", "expected none or http://"), ("socks5://egress:1080", "expected"),
     ("http://egress:3128/path", "no path or query"), ("http://", "expected")],
)  # fmt: skip
def test_upstream_proxy_is_checked(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(write_config(tmp_path, upstream={"proxy": value}), env={})
    assert (
        load_config(write_config(tmp_path, upstream={"proxy": "none"}), env={}).upstream.proxy
        == "none"
    )
