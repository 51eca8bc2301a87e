from __future__ import annotations

import itertools
from collections.abc import Callable

import psycopg
import pytest

from tests.support.components import PostgresServer, RelayProcess

_counter = itertools.count()


def fresh_database(server: PostgresServer) -> str:
    name = f"relay_{next(_counter)}"
    admin = server.dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite, else the DSN of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return fresh_database(server)


@pytest.fixture
def any_relay(backend: str | None, relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    return relay_factory(database_url=backend)
