"""Who may use the web app: accounts with hashed passwords and API tokens, in one YAML file.

    users:                      # name: password hash (werkzeug's scrypt), from `semspark web-user add NAME`
      alice: "scrypt:32768:8:1$..."
    tokens:                     # name: SHA-256 of the token, from `semspark web-user token NAME`
      alice: "9f86d081..."

The file lives in ``$SEMSPARK_HOME`` (``web.users_file``) and is written readable by its owner
only. Plain passwords and tokens are never stored: a token is shown once when made. Behind a
single-sign-on proxy, ``web.sso_header`` names the header the proxy sets to the signed-in user
instead (then nobody logs in here; only safe when nothing but the proxy can reach the port).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

import yaml

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8


class AccountError(ValueError):
    """An account request that cannot be carried out; the message says why."""


def _read(path: Path) -> dict:
    if not path.exists():
        return {"users": {}, "tokens": {}}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AccountError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k, {}) or {}, dict) for k in ("users", "tokens")):
        raise AccountError(f"{path}: expected the mappings users: and tokens:")
    return {"users": dict(raw.get("users") or {}), "tokens": dict(raw.get("tokens") or {})}


def _write(path: Path, accounts: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(accounts, fh, sort_keys=True)
    os.replace(temporary, path)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, path: Path):
        self.path = path

    def add_user(self, name: str, password: str) -> None:
        from werkzeug.security import generate_password_hash

        if not NAME.match(name):
            raise AccountError(f"user name {name!r}: 1 to 64 letters, digits or _ . @ -")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        accounts = _read(self.path)
        accounts["users"][name] = generate_password_hash(password)
        _write(self.path, accounts)

    def remove_user(self, name: str) -> bool:
        accounts = _read(self.path)
        found = accounts["users"].pop(name, None) is not None
        found = accounts["tokens"].pop(name, None) is not None or found
        _write(self.path, accounts)
        return found

    def new_token(self, name: str) -> str:
        """A new API token for an existing user (it replaces the previous one); returned once."""
        accounts = _read(self.path)
        if name not in accounts["users"]:
            raise AccountError(f"no user {name!r} in {self.path}: semspark web-user add {name} first")
        token = secrets.token_urlsafe(32)
        accounts["tokens"][name] = token_digest(token)
        _write(self.path, accounts)
        return token

    def names(self) -> list[str]:
        return sorted(_read(self.path)["users"])

    def check_password(self, name: str, password: str) -> bool:
        from werkzeug.security import check_password_hash

        stored = _read(self.path)["users"].get(name)
        if not stored:
            check_password_hash("scrypt:32768:8:1$x$" + "0" * 128, password)   # same time for unknown names
            return False
        return check_password_hash(str(stored), password)

    def user_of_token(self, token: str) -> str | None:
        digest = token_digest(token)
        for name, stored in _read(self.path)["tokens"].items():
            if hmac.compare_digest(str(stored), digest):
                return name
        return None


class LoginThrottle:
    """Failed logins counted per user name and per address over a sliding window: past the limit,
    logins are refused (even with the right password) until the oldest failure leaves the window,
    so passwords cannot be guessed at the server's speed. The address limit is higher than the
    user limit: a lab behind one address must not be locked out by one person's typos."""

    def __init__(self, per_user: int = 5, per_address: int = 20, window_s: float = 900.0, clock=None):
        import threading
        import time

        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self.clock = clock or time.monotonic
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> list[float]:
        now = self.clock()
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def wait_s(self, user: str, address: str) -> float:
        """Seconds until this user may try again from this address (0: now)."""
        with self._lock:
            waits = []
            for key, limit in ((("user", user.lower()), self.per_user), (("address", address), self.per_address)):
                recent = self._recent(key)
                if len(recent) >= limit:
                    waits.append(recent[-limit] + self.window_s - self.clock())
            return max([0.0] + waits)

    def failed(self, user: str, address: str) -> None:
        with self._lock:
            now = self.clock()
            for key in (("user", user.lower()), ("address", address)):
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("user", user.lower()), None)
