"""The console's CSRF tokens and sealed cookies (sandboxd/console/security.py)."""

from __future__ import annotations

import pytest

from sandboxd.console.security import Secrets
from sandboxd.errors import Forbidden


def test_a_csrf_token_is_bound_to_its_session_and_server() -> None:
    secrets = Secrets(b"p" * 32)
    token = secrets.csrf_token("session:abc")
    secrets.check_csrf("session:abc", token)
    for binding, presented in (
        ("session:abd", token),  # another session
        ("session:abc", token[:-1] + ("0" if token[-1] != "0" else "1")),
        ("session:abc", None),
        ("session:abc", ""),
        (None, token),
    ):
        with pytest.raises(Forbidden, match="CSRF"):
            secrets.check_csrf(binding, presented)
    with pytest.raises(Forbidden):
        Secrets(b"q" * 32).check_csrf("session:abc", token)  # another server's secret


def test_a_sealed_cookie_comes_back_unless_changed_or_expired() -> None:
    secrets = Secrets(b"p" * 32)
    sealed = secrets.seal({"state": "s1", "nonce": "n1"}, 60)
    opened = secrets.unseal(sealed)
    assert opened is not None and opened["state"] == "s1" and opened["nonce"] == "n1"
    body, mac = sealed.rsplit(".", 1)
    assert secrets.unseal(body + "." + "0" * len(mac)) is None
    assert secrets.unseal(body[:-2] + "xx." + mac) is None
    assert secrets.unseal(None) is None and secrets.unseal("garbage") is None
    assert Secrets(b"q" * 32).unseal(sealed) is None
    expired = secrets.seal({"state": "s"}, -1)
    assert secrets.unseal(expired) is None


def test_after_sign_in_only_a_console_page_is_a_destination() -> None:
    from sandboxd.console.auth import _next

    assert _next("/console/keys?x=1") == "/console/keys?x=1"
    for elsewhere in (None, "", "https://evil.example/", "//evil.example/console/", "/v1/sandbox/execute",
                      "/console", "/console\\@evil.example", "/consolex/"):
        assert _next(elsewhere) == "/console/", elsewhere


def test_a_pre_session_value_is_the_servers_and_bound_to_the_address_it_was_issued_to() -> None:
    secrets = Secrets(b"p" * 32)
    issued = secrets.pre_binding("203.0.113.7")
    assert issued != secrets.pre_binding("203.0.113.7")  # fresh each time
    token = secrets.csrf_token("pre:" + issued)
    secrets.check_pre(issued, "203.0.113.7", token)
    planted = "attacker-chosen-value"
    for binding, ip, presented in (
        (issued, "198.51.100.9", token),  # planted in another address's browser
        (planted, "203.0.113.7", secrets.csrf_token("pre:" + planted)),  # made up, token and all
        (issued, "203.0.113.7", secrets.csrf_token("pre:" + planted)),  # another value's token
        (Secrets(b"q" * 32).pre_binding("203.0.113.7"), "203.0.113.7", token),  # another server's
        (secrets.pre_binding("203.0.113.7", max_age_s=-1), "203.0.113.7", None),  # expired
        (None, "203.0.113.7", token),
    ):
        with pytest.raises(Forbidden, match="CSRF"):
            secrets.check_pre(binding, ip, presented if presented is not None else secrets.csrf_token(f"pre:{binding}"))
