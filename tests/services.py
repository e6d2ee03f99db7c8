"""Real services for the tests marked ``services``: PostgreSQL, Redis and an S3 server.

The machine's PostgreSQL (``AFTERBELL_TEST_PG_URL``, default the ``postgres`` database on
127.0.0.1:5432) gives each test a database of its own, dropped afterwards; Redis (127.0.0.1:6379)
a database index of its own (``AFTERBELL_TEST_REDIS_DB``, default 13) and symbols no one else
uses; S3 is moto's server, started in-process on a free loopback port.

Where PostgreSQL or Redis do not answer, the tests that need them are skipped with a message
naming the service and the error, unless ``AFTERBELL_REQUIRE_SERVICES=1`` (set by ``.ci/run``)
makes that a failure.

Test modules use the fixtures by importing them::

    from tests.services import pg_database, redis_space  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

__all__ = [
    "PG_ADMIN_URL",
    "REDIS_DB",
    "REDIS_HOST",
    "REDIS_PORT",
    "REQUIRE_ENV",
    "RedisSpace",
    "S3Endpoint",
    "free_port",
    "pg_database",
    "redis_space",
    "s3_server",
    "temporary_pg_database",
    "unreachable",
]

#: Admin connection (libpq URL) used to create and drop the tests' databases.
PG_ADMIN_URL = os.environ.get(
    "AFTERBELL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Redis database index of these tests (not 0): keys are namespaced further by unique symbols.
REDIS_DB = int(os.environ.get("AFTERBELL_TEST_REDIS_DB", "13"))
#: ``1`` makes an unreachable service a failure instead of a skip (CI).
REQUIRE_ENV = "AFTERBELL_REQUIRE_SERVICES"


def unreachable(what: str, exc: BaseException) -> NoReturn:
    """Skip the test because ``what`` does not answer, or fail it when services are required.

    Parameters
    ----------
    what : str
        The service, as the message names it (``PostgreSQL``, ``Redis``).
    exc : BaseException
        The connection error.
    """
    message = f"{what} is not reachable: {exc}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: the services tests must run)")
    pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to make this a failure)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def temporary_pg_database(prefix: str = "afterbell_test") -> Iterator[str]:
    """A fresh PostgreSQL database, dropped (connections closed) on exit.

    Parameters
    ----------
    prefix : str
        Start of the database's name (a random suffix follows).

    Yields
    ------
    str
        Its SQLAlchemy URL (``postgresql+psycopg://``).
    """
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unreachable("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test; yields its SQLAlchemy URL."""
    with temporary_pg_database() as url:
        yield url


@dataclass(frozen=True)
class RedisSpace:
    """A Redis database index and symbols of one test."""

    client: Any
    connection_string: str
    symbols: tuple[str, ...]

    def keys(self) -> list[bytes]:
        """Keys of this test's symbols (their serialised entity keys hold the symbol text)."""
        return [k for s in self.symbols for k in self.client.scan_iter(match=f"*{s}*".encode())]


@pytest.fixture
def redis_space() -> Iterator[RedisSpace]:
    """A Redis database index and symbols no one else uses; their keys are deleted after."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        unreachable("Redis", exc)
    tag = uuid.uuid4().hex[:8].upper()
    space = RedisSpace(
        client=client,
        connection_string=f"{REDIS_HOST}:{REDIS_PORT},db={REDIS_DB}",
        symbols=(f"T{tag}A", f"T{tag}B", f"T{tag}C"),  # the last one gets no feature rows
    )
    try:
        yield space
    finally:
        keys = space.keys()
        if keys:
            client.delete(*keys)
        client.close()


@dataclass(frozen=True)
class S3Endpoint:
    """An S3-compatible server on loopback with one bucket, and the credentials it accepts.

    ``env`` is what a client process needs (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``); moto takes
    any key, so the secret key is a throwaway value the tests can also look for in outputs.
    """

    url: str
    bucket: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 S3 client of this endpoint."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key of the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Endpoint]:
    """moto's S3 server (threaded, in this process) on a free loopback port, with a bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = S3Endpoint(
            url=f"http://127.0.0.1:{port}",
            bucket=f"afterbell-test-{uuid.uuid4().hex[:8]}",
            access_key="AKIAAFTERBELLTEST",
            secret_key=f"s3-secret-{uuid.uuid4().hex}",
        )
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
        yield endpoint
    finally:
        server.stop()
