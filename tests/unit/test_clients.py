"""Who a client is: per-client keys, trusted proxies and their setting."""

from __future__ import annotations

import pydantic
import pytest

from sandboxd.clients import TrustedProxies, client_key
from sandboxd.config import Settings


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::1", "::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_key(host: str, key: str) -> None:
    assert client_key(host) == key


def test_trusted_proxies() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.9.0.0/16", "fd00::/8"])
    assert "127.0.0.1" in proxies and "10.9.200.1" in proxies and "fd00::5" in proxies
    for host in ("127.0.0.2", "10.10.0.1", "::1", "unknown", None):
        assert host not in proxies
    assert proxies.as_uvicorn() == ["127.0.0.1/32", "10.9.0.0/16", "fd00::/8"]
    none = TrustedProxies([])
    assert not none and "127.0.0.1" not in none


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trusted_proxies == []  # none by default
    monkeypatch.setenv("SANDBOXD_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    assert Settings().trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    monkeypatch.setenv("SANDBOXD_TRUSTED_PROXIES", "127.0.0.1, proxy.internal")
    with pytest.raises(pydantic.ValidationError, match="proxy.internal"):
        Settings()
