"""Fixtures shared by every test folder: the throwaway PostgreSQL server and the
``db_url`` parameter that runs a store's tests on both engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PgServer, pg_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session (started on first use)."""
    with pg_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` (embedded SQLite) or the URL of a fresh PostgreSQL database: store tests
    that take this fixture run once per engine."""
    if request.param == "sqlite":
        return None
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()
