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
``aenode web hash-password``) and get an HTTP-only session cookie (``SameSite=Lax``) that
names a server-side session record (:class:`aenode.web.store.WebStore`): logout ends the
record, so a copied cookie is refused afterwards; a changed password (a new
``password_hash`` in the configuration, or a new generated admin password) ends every
session opened with the old one.  Each session has a CSRF token: every form carries it in
a hidden field, every JSON write made with the cookie in an ``X-CSRF-Token`` header.
Programs (Prometheus, scripts) use ``Authorization: Bearer <token>``; only the token's
SHA-256 is configured, and bearer requests need no CSRF token (no ambient credentials).
The role is looked up in the configuration on every request.

Failed logins are throttled per account (at each address) and per address, and password
verification is bounded (:mod:`aenode.web.throttle`).

No users configured (built-in defaults): the configuration refuses a non-loopback
``web.host``; on loopback the node creates one user ``admin`` (role radiologist) with a
random password written once to ``DataDir.web_dir / "admin-password"`` (mode 0600,
readable by the service user only) and never printed or logged; the demo reads it with
:func:`read_admin_password`.  Delete the file to get a new password at the next start
(sessions of the old one end); configure ``[[web.users]]`` to replace it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from aenode.config import Config, _is_loopback
from aenode.logs import get_logger
from aenode.store.datadir import DataDir
from aenode.web.store import WebStore
from aenode.web.throttle import GUESSING_WARN_EVERY, Busy, LoginThrottle, VerifierGate

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
ADMIN_PASSWORD_FILE = "admin-password"
SESSION_SECRET_FILE = "session-secret"

_HASHER = PasswordHasher()


def web_dir(data_dir: str | Path) -> Path:
    """``DataDir.web_dir``, created private to the service user."""
    d = DataDir.of(data_dir).web_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def read_admin_password(data_dir: str | Path) -> str | None:
    """The generated admin password, or None when none was generated (users configured).
    For the demo's own terminal; ``aenode serve`` never prints or logs it."""
    try:
        return (DataDir.of(data_dir).web_dir / ADMIN_PASSWORD_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("password: must not be empty")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def credential_fingerprint(password_hash: str) -> str:
    """Names the credential a session was opened with, without storing the hash again."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:32]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _read_or_create_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
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
    session: str | None = None  # SHA-256 of the session id (None for bearer tokens)

    def can(self, roles: frozenset[str]) -> bool:
        return self.role in roles


@dataclass(frozen=True)
class LoginOutcome:
    """``role`` on success; else ``retry_after`` > 0 when throttled or busy (HTTP 429)."""

    role: str | None
    retry_after: float = 0.0
    reason: str = ""


class Authenticator:
    """Users, tokens, login throttling and server-side sessions of one configuration."""

    def __init__(self, config: Config, store: WebStore):
        self.config = config
        self.store = store
        wd = web_dir(config.node.data_dir)
        self.users: dict[str, tuple[str, str]] = {u.name: (u.role, u.password_hash) for u in config.web.users}
        self.tokens: dict[str, tuple[str, str]] = {t.token_sha256: (t.name, t.role) for t in config.web.tokens}
        self.generated_admin_file: Path | None = None
        if not self.users:
            path = wd / ADMIN_PASSWORD_FILE
            password, created = _read_or_create_secret(path, lambda: secrets.token_urlsafe(18))
            self.users[DEFAULT_ADMIN] = (RADIOLOGIST, hash_password(password))
            self.generated_admin_file = path
            # The password itself is never printed nor logged: it stays in the private file.
            log.warning("web_default_admin", user=DEFAULT_ADMIN, password_file=str(path), created=created,
                        hint="configure [[web.users]] for real use")
        # The argon2 hash is salted: fingerprint the stored credential, not the re-hash.
        self._fingerprints = {name: credential_fingerprint(h) for name, (_, h) in self.users.items()}
        if self.generated_admin_file is not None:
            self._fingerprints[DEFAULT_ADMIN] = credential_fingerprint("generated:" + password)
        for name, fp in self._fingerprints.items():
            ended = self.store.end_sessions(name, "password_changed", except_credential=fp)
            if ended:
                log.info("web_sessions_ended", user=name, reason="password_changed", sessions=ended)
        secret = config.web.session_secret
        if secret is None:
            secret, _ = _read_or_create_secret(wd / SESSION_SECRET_FILE, lambda: secrets.token_urlsafe(48))
        self._serializer = URLSafeTimedSerializer(secret, salt="aenode-web-session")
        self._login_serializer = URLSafeTimedSerializer(secret, salt="aenode-web-login")
        self.max_age = int(config.web.session_hours * 3600)
        self.throttle = LoginThrottle(max_delay=config.web.login_max_delay_seconds,
                                      max_block=config.web.login_max_block_seconds)
        self.gate = VerifierGate(config.web.login_concurrency, config.web.login_queue)
        self._dummy_hash = hash_password(secrets.token_urlsafe(12))

    # ---- credentials -----------------------------------------------------------------

    def _verify(self, name: str, password: str) -> str | None:
        entry = self.users.get(name)
        if entry is None:
            # Same cost as a real verification, so a wrong name is not faster.
            verify_password(self._dummy_hash, password)
            return None
        return entry[0] if verify_password(entry[1], password) else None

    def login(self, name: str, password: str, address: str) -> LoginOutcome:
        """Throttled, bounded password check (see :mod:`aenode.web.throttle`)."""
        wait = self.throttle.retry_after(name, address)
        if wait > 0:
            return LoginOutcome(None, wait, "throttled")
        try:
            with self.gate.slot():
                role = self._verify(name, password)
        except Busy:
            return LoginOutcome(None, 1.0, "busy")
        if role is None:
            total = self.throttle.failed(name, address)
            if total % GUESSING_WARN_EVERY == 0:
                log.warning("web_login_guessing", user=name, failures=total,
                            hint="many failed logins on one account; check the sources in the access logs")
            return LoginOutcome(None)
        self.throttle.succeeded(name, address)
        return LoginOutcome(role)

    def from_bearer(self, token: str) -> Principal | None:
        got = self.tokens.get(token_sha256(token))
        if got is None:
            return None
        return Principal(got[0], got[1], "token")

    # ---- sessions --------------------------------------------------------------------

    def new_session(self, name: str, role: str) -> str:
        """Open a server-side session for a user who just logged in; returns the cookie."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        self.store.open_session(token_sha256(session_id), name, role, csrf, self._fingerprints[name],
                                time.time() + self.max_age)
        return self._serializer.dumps({"s": session_id})

    def from_session(self, cookie: str) -> Principal | None:
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except (BadSignature, SignatureExpired):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("s"), str):
            return None
        id_hash = token_sha256(data["s"])
        record = self.store.session(id_hash)
        if record is None:  # never existed, logged out, or expired
            return None
        entry = self.users.get(record.user)
        if entry is None:  # user removed from the configuration
            return None
        if record.credential != self._fingerprints.get(record.user):
            return None  # opened with a password that has changed since
        return Principal(record.user, entry[0], "session", record.csrf, id_hash)

    def end_session(self, principal: Principal) -> None:
        if principal.session is not None:
            self.store.end_session(principal.session, "logout", principal.role)

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

    def secure_cookies(self, scheme: str) -> bool:
        """Secure flag: forced by ``[web] secure_cookies``, else on over TLS or when public."""
        forced = self.config.web.secure_cookies
        if forced is not None:
            return forced
        return scheme == "https" or not _is_loopback(self.config.web.host)


def csrf_ok(principal: Principal, supplied: str | None) -> bool:
    if principal.via == "token":
        return True
    return bool(supplied) and bool(principal.csrf) and hmac.compare_digest(str(principal.csrf), str(supplied))
