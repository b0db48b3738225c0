"""A throwaway PostgreSQL cluster for tests (issue #18): initdb/pg_ctl from the OS packages on a
free loopback port, its socket and data in a temporary folder, deleted afterwards. Tests that need
it skip, saying why, only where PostgreSQL (or psycopg) is absent; .ci/run installs it."""

from __future__ import annotations

import itertools

import pytest

from payload_sim.constellation import PgCluster, pg_missing_reason

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster():
    reason = pg_missing_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL not available: {reason}")
    cluster = PgCluster(fsync=False)  # nothing here measures durability
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster):
    """A fresh, empty database on the session's cluster, as a postgresql:// URL."""
    import psycopg

    name = f"t{next(_names)}"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
