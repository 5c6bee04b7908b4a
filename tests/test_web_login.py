"""Logins to the web app (Flask's test client, no browser): guessing is throttled per user and per
address over a window, counted by hand; the cookie is Secure when the operator says TLS is in front."""
from __future__ import annotations

import pytest

from semspark.config import Config, WebConfig
from semspark.web.accounts import Accounts, LoginThrottle

PASSWORD = "microscope-2026"


def test_the_throttle_counts_failures_per_user_and_per_address_in_a_window():
    now = [1000.0]
    throttle = LoginThrottle(per_user=3, per_address=5, window_s=600, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait_s("alice", "10.0.0.1") == 0
        throttle.failed("alice", "10.0.0.1")
    assert throttle.wait_s("Alice", "10.0.0.9") == 600          # the user, from anywhere, any case
    assert throttle.wait_s("bob", "10.0.0.1") == 0               # the address is under its limit
    now[0] += 200
    throttle.failed("bob", "10.0.0.1")
    throttle.failed("carol", "10.0.0.1")
    assert throttle.wait_s("dave", "10.0.0.1") == 400            # 5 from that address: until the first leaves
    now[0] += 400
    assert throttle.wait_s("alice", "10.0.0.1") == 0 and throttle.wait_s("dave", "10.0.0.1") == 0
    throttle.failed("erin", "10.0.0.2")
    throttle.succeeded("erin")
    assert throttle.wait_s("erin", "10.0.0.3") == 0


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSPARK_HOME", str(tmp_path))
    Accounts(tmp_path / WebConfig().users_file).add_user("alice", PASSWORD)
    return tmp_path


def _client(home, **web):
    from semspark.web.app import create_app

    return create_app(Config(web=WebConfig(**web)), home).test_client()


def test_the_sixth_guess_is_refused_even_with_the_right_password(home):
    client = _client(home)
    for _ in range(5):
        assert client.post("/login", data={"user": "alice", "password": "guess"}).status_code == 401
    refused = client.post("/login", data={"user": "alice", "password": PASSWORD})
    assert refused.status_code == 429 and b"too many failed logins" in refused.data
    assert client.get("/api/whoami").status_code == 401


def test_the_login_cookie_is_secure_behind_tls_and_httponly_always(home):
    for secure in (False, True):
        response = _client(home, secure_cookies=secure).post("/login", data={"user": "alice", "password": PASSWORD})
        assert response.status_code == 302
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and ("; Secure" in cookie) == secure
