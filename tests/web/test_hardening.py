"""Issue 15 for the dashboard, against the real application served by uvicorn on loopback
inside a running node (``aenode.node.running_node``): server-side sessions, login
throttling that cannot lock the admin out for good, bounded password work, ``Secure``
cookies, and a cheap, read-only ``/healthz``.

Different client addresses are real loopback source addresses (127.0.0.x), so the
per-address rules are exercised over real TCP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from aenode.config import REPO_MODELS_DIR, Config, parse_config
from aenode.node import running_node
from aenode.peers import wait_for
from aenode.store.db import Database
from aenode.web.auth import SESSION_COOKIE, hash_password
from tests.web.conftest import PASSWORDS, free_port, seed_study, web_section


def _config(data_dir: Path, hashes: dict[str, str], **web: object) -> Config:
    return parse_config({
        "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(), "data_dir": str(data_dir)},
        "model": {"path": str(REPO_MODELS_DIR)},
        "web": web_section(hashes, **web),
    })


@contextlib.contextmanager
def serving(config: Config) -> Iterator[str]:
    """The node with its web worker (uvicorn on loopback); yields the dashboard's base URL."""
    with running_node(config, workers=("web",)) as node:
        w = node.web
        assert w is not None and wait_for(lambda: w.ready.is_set(), 20), "web server did not start"
        yield w.url


def client(base: str, address: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, follow_redirects=False,
                        transport=httpx.HTTPTransport(local_address=address))


def login(c: httpx.Client, user: str, password: str | None = None) -> httpx.Response:
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    return c.post("/login", data={"username": user, "password": PASSWORDS.get(user, "") if password is None
                                  else password, "csrf_token": token.group(1), "next": "/alerts"})


def logged_in(r: httpx.Response) -> bool:
    return r.status_code == 303 and r.headers["location"] == "/alerts"


def csrf_of(c: httpx.Client) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/alerts").text)
    assert m
    return m.group(1)


# ---- sessions ---------------------------------------------------------------------------


def test_logout_ends_the_session_for_a_copied_cookie(tmp_path, hashes):
    config = _config(tmp_path / "d", hashes)
    with serving(config) as base, client(base) as c, client(base) as thief:
        assert logged_in(login(c, "ines"))
        cookie = c.cookies[SESSION_COOKIE]
        thief.cookies.set(SESSION_COOKIE, cookie)
        assert thief.get("/api/studies").status_code == 200  # the copy works while the session lives
        r = c.post("/logout", data={"csrf_token": csrf_of(c)})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert thief.get("/api/studies").status_code == 401  # ... and not after logout
        assert thief.get("/alerts").status_code == 303
        # The audit log records login and logout.
        assert logged_in(login(c, "ines"))
        actions = [e["action"] for e in c.get("/api/audit").json()["audit"] if e["user"] == "ines"]
        assert actions[:3] == ["login", "logout", "login"]


def test_password_change_ends_sessions(tmp_path, hashes):
    data_dir = tmp_path / "d"
    config = _config(data_dir, hashes)
    with serving(config) as base, client(base) as c, client(base) as other:
        assert logged_in(login(c, "rada")) and logged_in(login(other, "ines"))
        rada_cookie, ines_cookie = c.cookies[SESSION_COOKIE], other.cookies[SESSION_COOKIE]
        assert c.get("/api/studies").status_code == 200
    # rada's password is changed in the configuration; the node restarts with it.
    new_hashes = {**hashes, "rada": hash_password("radiologist-pass-2")}
    config2 = _config(data_dir, new_hashes)
    with serving(config2) as base, client(base) as c, client(base) as other:
        c.cookies.set(SESSION_COOKIE, rada_cookie)
        other.cookies.set(SESSION_COOKIE, ines_cookie)
        assert c.get("/api/studies").status_code == 401  # opened with the old password: ended
        assert other.get("/api/studies").status_code == 200  # ines' password did not change
        c.cookies.clear()
        assert not logged_in(login(c, "rada"))
        assert logged_in(login(c, "rada", "radiologist-pass-2"))


def test_new_generated_admin_password_ends_sessions(tmp_path):
    data_dir = tmp_path / "d"
    config = parse_config({"node": {"port": free_port(), "data_dir": str(data_dir)}, "web": {"port": free_port()},
                           "model": {"path": str(REPO_MODELS_DIR)}})
    pw_file = data_dir / "web" / "admin-password"
    with serving(config) as base, client(base) as c:
        assert logged_in(login(c, "admin", pw_file.read_text().strip()))
        cookie = c.cookies[SESSION_COOKIE]
    pw_file.unlink()  # the documented way to get a new admin password
    with serving(config) as base, client(base) as c:
        c.cookies.set(SESSION_COOKIE, cookie)
        assert c.get("/api/alerts").status_code == 401


# ---- throttling -------------------------------------------------------------------------


def test_login_throttling_per_address_and_account_never_locks_out(tmp_path, hashes):
    config = _config(tmp_path / "d", hashes, login_max_delay_seconds=30.0, login_max_block_seconds=600.0)
    with serving(config) as base, client(base, "127.0.0.2") as attacker, client(base, "127.0.0.3") as guesser, \
            client(base) as rada:
        # One address guessing many names: blocked after 20 failures, even with a right password.
        codes = [login(attacker, f"user{i}", "wrong").status_code for i in range(20)]
        assert codes == [303] * 20
        r = login(attacker, "rada")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 30, r.status_code
        assert "Too many failed sign-ins" in r.text
        # One account guessed from another address: after 5 failures that address waits...
        assert [login(guesser, "rada", "wrong").status_code for _ in range(5)] == [303] * 5
        r = login(guesser, "rada")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
        # ... and neither guesser can keep the real user out: rada, at her own address, gets in.
        assert logged_in(login(rada, "rada"))
        assert rada.get("/api/studies").status_code == 200
        # The delay on the guessed account is capped and expires by itself (refused attempts
        # while it runs are not counted, so hammering does not extend it).
        time.sleep(1.05)
        assert login(guesser, "rada", "wrong").status_code == 303  # counted again: 6th failure
        assert login(guesser, "rada", "wrong").status_code == 429  # now 2 s
        assert login(guesser, "rada", "wrong").status_code == 429


def test_throttle_rules():
    from aenode.web.throttle import LoginThrottle

    now = [1000.0]
    t = LoginThrottle(max_delay=8.0, max_block=120.0, clock=lambda: now[0])
    for _ in range(5):
        assert t.retry_after("admin", "10.0.0.9") == 0
        t.failed("admin", "10.0.0.9")
    delays = []
    for _ in range(6):  # exponential, capped at max_delay
        delays.append(t.retry_after("admin", "10.0.0.9"))
        now[0] += delays[-1]
        t.failed("admin", "10.0.0.9")
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert t.retry_after("admin", "10.0.0.1") == 0  # another address is never delayed for this account
    t.succeeded("admin", "10.0.0.9")
    assert t.retry_after("admin", "10.0.0.9") == 0
    for i in range(20):
        t.failed(f"u{i}", "10.0.0.7")
    assert t.retry_after("anyone", "10.0.0.7") == 60.0  # the address: first block one minute
    now[0] += 60
    t.failed("u0", "10.0.0.7")
    assert t.retry_after("anyone", "10.0.0.7") == 120.0  # doubling, capped at max_block
    now[0] += 10_000  # long quiet: forgotten
    assert t.retry_after("anyone", "10.0.0.7") == 0


def test_login_flood_is_bounded(tmp_path, hashes):
    """40 simultaneous logins from 40 addresses: at most 1 verification runs and 2 wait; the
    rest are answered 429 at once instead of queueing argon2 work (64 MiB each)."""
    config = _config(tmp_path / "d", hashes, login_concurrency=1, login_queue=2)
    with serving(config) as base:
        clients = [client(base, f"127.0.0.{10 + i}") for i in range(40)]
        try:
            tokens = []
            for c in clients:
                m = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text)
                assert m
                tokens.append(m.group(1))

            def attempt(i: int) -> tuple[int, str]:
                r = clients[i].post("/login", data={"username": f"flood{i}", "password": "wrong-password",
                                                    "csrf_token": tokens[i], "next": "/alerts"})
                return r.status_code, r.text

            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                results = list(pool.map(attempt, range(40)))
        finally:
            for c in clients:
                c.close()
    codes = [code for code, _ in results]
    busy = [text for code, text in results if code == 429]
    assert set(codes) <= {303, 429}, codes
    assert codes.count(303) >= 1 and len(busy) >= 15, codes
    assert all("busy" in text for text in busy)


# ---- cookies ----------------------------------------------------------------------------


def _session_cookie_header(r: httpx.Response) -> str:
    return next(v for v in r.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "="))


def test_secure_cookie_over_tls_or_when_forced(tmp_path, hashes):
    with serving(_config(tmp_path / "d", hashes)) as base, client(base) as c:
        plain = login(c, "vera")
        assert logged_in(plain) and "secure" not in _session_cookie_header(plain).lower()
        # Served over TLS by a reverse proxy on this host (uvicorn trusts 127.0.0.1's X-Forwarded-Proto).
        c.cookies.clear()
        page = c.get("/login", headers={"X-Forwarded-Proto": "https"})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token and "secure" in page.headers["set-cookie"].lower()
        c.cookies.clear()  # a client does not send Secure cookies over plain HTTP: hand it over like the proxy
        r = c.post("/login", headers={"X-Forwarded-Proto": "https", "Cookie": f"aenode_login_csrf={token.group(1)}"},
                   data={"username": "vera", "password": PASSWORDS["vera"], "csrf_token": token.group(1)})
        assert r.status_code == 303 and "secure" in _session_cookie_header(r).lower()
    with serving(_config(tmp_path / "d2", hashes, secure_cookies=True)) as base, client(base) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token and "secure" in page.headers["set-cookie"].lower()
        c.cookies.clear()
        r = c.post("/login", headers={"Cookie": f"aenode_login_csrf={token.group(1)}"},
                   data={"username": "vera", "password": PASSWORDS["vera"], "csrf_token": token.group(1)})
        assert r.status_code == 303 and "secure" in _session_cookie_header(r).lower()


def test_secure_cookie_when_public(tmp_path, hashes):
    from aenode.web.auth import Authenticator
    from aenode.web.store import WebStore

    public = parse_config({"node": {"data_dir": str(tmp_path / "d")}, "web": web_section(hashes, host="0.0.0.0")})
    store = WebStore.for_data_dir(public.node.data_dir)
    try:
        assert Authenticator(public, store).secure_cookies("http") is True
        assert Authenticator(public.model_copy(update={"web": public.web.model_copy(
            update={"secure_cookies": False})}), store).secure_cookies("https") is False
    finally:
        store.close()


# ---- /healthz ---------------------------------------------------------------------------


def _files(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file in data_dir and of the folder itself (a file created and
    removed again shows there); SQLite's shared-memory index excepted: readers map it."""
    got = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.iterdir()
           if p.is_file() and not p.name.endswith("-shm")}
    got["."] = (0, data_dir.stat().st_mtime_ns)
    return got


def test_healthz_is_cheap_and_read_only(tmp_path, hashes):
    data_dir = tmp_path / "d"
    config = _config(data_dir, hashes, health_cache_seconds=30)
    seed_study(data_dir)
    with serving(config) as base, client(base) as c:
        assert c.get("/healthz").json()["checks"]["database"]["ok"] is True
        before = _files(data_dir)
        # Another writer holds write transactions on every database: /healthz neither waits nor fails.
        dbs = [Database(data_dir / name, "") for name in ("index.sqlite", "web.sqlite", "outbox.sqlite",
                                                          "alerts.sqlite")]
        try:
            with contextlib.ExitStack() as locks:
                for db in dbs:
                    locks.enter_context(db.tx())
                t0 = time.monotonic()
                time.sleep(2.1)  # past the cached body: the checks run again under the locks
                r = c.get("/healthz")
                assert r.json()["checks"]["database"]["ok"] is True, r.json()
                assert time.monotonic() - t0 < 4.0
        finally:
            for db in dbs:
                db.close()
        # A flood of health checks is answered from the cache and writes nothing.
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.get("/healthz").status_code, range(200)))
        elapsed = time.monotonic() - t0
        assert set(codes) <= {200, 503} and elapsed < 20, elapsed
        assert _files(data_dir) == before


# ---- the generated admin password under `aenode serve` -------------------------------------


def test_serve_never_prints_the_admin_password(tmp_path):
    """`aenode serve` without [[web.users]]: the password is only in its 0600 file; neither the
    JSON log nor anything else the process writes contains it."""
    import signal
    import subprocess
    import sys

    data_dir = tmp_path / "d"
    web_port = free_port()
    toml = tmp_path / "node.toml"
    toml.write_text(f'[node]\nport = {free_port()}\ndata_dir = "{data_dir}"\n[model]\npath = "{REPO_MODELS_DIR}"\n'
                    f"[web]\nport = {web_port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(toml)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=2).status_code in (200, 503)
            except httpx.TransportError:
                return False

        assert wait_for(up, 90), "aenode serve did not start its dashboard"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    pw_file = data_dir / "web" / "admin-password"
    password = pw_file.read_text().strip()
    assert len(password) >= 20 and oct(pw_file.stat().st_mode & 0o777) == "0o600"
    assert "web_default_admin" in out + err and str(pw_file) in out + err
    assert password not in out and password not in err
