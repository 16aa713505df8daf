"""Who may do what on the dashboard.

Roles (``[[web.users]] role`` / ``[[web.tokens]] role``):

=====================  ======  ===========  ==================
permission             viewer  infection-   radiologist
                               control
=====================  ======  ===========  ==================
read pages and API     yes     yes          yes
acknowledge an alert   no      yes          yes
audit log              no      yes          yes
confirm / correct      no      no           yes
=====================  ======  ===========  ==================

People log in with a name and password (argon2id hashes in the configuration, made with
``aenode web hash-password``) and get a signed, HTTP-only session cookie (itsdangerous,
``SameSite=Lax``) that also carries the session's CSRF token: every form carries it in a
hidden field, every JSON write made with the cookie in an ``X-CSRF-Token`` header.
Programs (Prometheus, scripts) use ``Authorization: Bearer <token>``; only the token's
SHA-256 is configured, and bearer requests need no CSRF token (no ambient credentials).
The role is looked up in the configuration on every request, so removing a user ends
their sessions at the next restart-free request.

No users configured (built-in defaults): the configuration refuses a non-loopback
``web.host``; on loopback the node creates one user ``admin`` (role radiologist) with a
random password written once to ``<data_dir>/web/admin-password`` (mode 0600) and printed
to stderr the first time.  Delete the file to get a new password at the next start;
configure ``[[web.users]]`` to replace it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from aenode.config import Config
from aenode.logs import get_logger

log = get_logger("aenode.web")

VIEWER, INFECTION_CONTROL, RADIOLOGIST = "viewer", "infection-control", "radiologist"
ROLES = (VIEWER, INFECTION_CONTROL, RADIOLOGIST)
CAN_ACKNOWLEDGE = frozenset({INFECTION_CONTROL, RADIOLOGIST})
CAN_AUDIT = frozenset({INFECTION_CONTROL, RADIOLOGIST})
CAN_CONFIRM = frozenset({RADIOLOGIST})
ANY_ROLE = frozenset(ROLES)

SESSION_COOKIE = "aenode_session"
LOGIN_CSRF_COOKIE = "aenode_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
DEFAULT_ADMIN = "admin"


def web_dir(config: Config) -> Path:
    d = Path(config.node.data_dir) / "web"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("password: must not be empty")
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _read_or_create_secret(path: Path, make: Any) -> tuple[str, bool]:
    try:
        return path.read_text(encoding="utf-8").strip(), False
    except FileNotFoundError:
        pass
    value = make()
    try:
        _write_private(path, value + "\n")
        return value, True
    except FileExistsError:  # another process won the race
        return path.read_text(encoding="utf-8").strip(), False


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # "session" or "token"
    csrf: str | None = None  # the session's CSRF token (None for bearer tokens)

    def can(self, roles: frozenset[str]) -> bool:
        return self.role in roles


class Authenticator:
    """Users, tokens and session cookies of one configuration."""

    def __init__(self, config: Config, *, announce: bool = True):
        self.config = config
        wd = web_dir(config)
        self.users: dict[str, tuple[str, str]] = {u.name: (u.role, u.password_hash) for u in config.web.users}
        self.tokens: dict[str, tuple[str, str]] = {t.token_sha256: (t.name, t.role) for t in config.web.tokens}
        self.generated_admin_file: Path | None = None
        if not self.users:
            path = wd / "admin-password"
            password, created = _read_or_create_secret(path, lambda: secrets.token_urlsafe(18))
            self.users[DEFAULT_ADMIN] = (RADIOLOGIST, hash_password(password))
            self.generated_admin_file = path
            if created and announce:
                # Printed once, to the operator's terminal; never to the (shipped) log.
                print(f"aenode web: no [[web.users]] configured; created user '{DEFAULT_ADMIN}' with password"
                      f" {password} (also in {path}, mode 0600)", file=sys.stderr, flush=True)
            log.warning("web_default_admin", user=DEFAULT_ADMIN, password_file=str(path),
                        hint="configure [[web.users]] for real use")
        secret = config.web.session_secret
        if secret is None:
            secret, _ = _read_or_create_secret(wd / "session-secret", lambda: secrets.token_urlsafe(48))
        self._serializer = URLSafeTimedSerializer(secret, salt="aenode-web-session")
        self._login_serializer = URLSafeTimedSerializer(secret, salt="aenode-web-login")
        self.max_age = int(config.web.session_hours * 3600)

    # ---- credentials -----------------------------------------------------------------

    def check_password(self, name: str, password: str) -> str | None:
        """The user's role if the password is right, else None (constant-ish time)."""
        entry = self.users.get(name)
        if entry is None:
            # Same cost as a real verification, so a wrong name is not faster.
            verify_password(_DUMMY_HASH(), password)
            return None
        return entry[0] if verify_password(entry[1], password) else None

    def from_bearer(self, token: str) -> Principal | None:
        got = self.tokens.get(token_sha256(token))
        if got is None:
            return None
        return Principal(got[0], got[1], "token")

    # ---- sessions --------------------------------------------------------------------

    def new_session(self, name: str) -> tuple[str, str]:
        """(cookie value, CSRF token) for a user who just logged in."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"u": name, "c": csrf, "t": int(time.time())}), csrf

    def from_session(self, cookie: str) -> Principal | None:
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except (BadSignature, SignatureExpired):
            return None
        if not isinstance(data, dict):
            return None
        entry = self.users.get(str(data.get("u")))
        if entry is None:  # user removed from the configuration
            return None
        return Principal(str(data["u"]), entry[0], "session", str(data.get("c") or ""))

    def new_login_csrf(self) -> str:
        return self._login_serializer.dumps(secrets.token_urlsafe(16))

    def check_login_csrf(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field or not hmac.compare_digest(cookie, field):
            return False
        try:
            self._login_serializer.loads(cookie, max_age=3600)
        except (BadSignature, SignatureExpired):
            return False
        return True


_dummy: list[str] = []


def _DUMMY_HASH() -> str:  # noqa: N802 - computed lazily, once
    if not _dummy:
        _dummy.append(hash_password(secrets.token_urlsafe(12)))
    return _dummy[0]


def csrf_ok(principal: Principal, supplied: str | None) -> bool:
    if principal.via == "token":
        return True
    return bool(supplied) and bool(principal.csrf) and hmac.compare_digest(str(principal.csrf), str(supplied))
