"""Fixtures shared by the suite: real PostgreSQL, a live service on SQLite or on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import hypothesis  # noqa: F401  (imported at start: see below)
import pytest

from tests.support.processes import Mosquitto, PostgresCluster, ServiceProcess, running

_db_counter = itertools.count()

# Every ``iotdefender serve`` the suite starts (and its detection worker) imports ~200 of the
# project's modules. With PYTHONDONTWRITEBYTECODE set, as some shells and tools set it,
# each of them compiled every module from source again: ~0.3 s of each start on two idle cores, ~0.6 s
# on loaded ones. The processes the tests start keep their bytecode in one cache outside the work
# tree instead (PYTHONPYCACHEPREFIX), so the tree stays free of it as the setting wanted; the cache
# is checked against each source file like any other.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "iotdefender-test-pycache"))

# hypothesis's pytest plugin imports hypothesis at the session's end when no test used it, and
# pytest rewrites each of its modules with ``ast.parse``. CPython 3.11's AST construction can fail
# there with a spurious "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905, pytest-dev/pytest#10763): seen here after every test had passed (the run
# exited non-zero), in runs of one module whose test left a failed task behind. Imported here, at
# collection, hypothesis is never parsed that late.


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop(remove_later=True)  # its files are deleted after the run (remove_in_background)


def _service_for(backend: str, request) -> ServiceProcess:  # type: ignore[no-untyped-def]
    data_dir = Path(tempfile.mkdtemp(prefix="iotdefender-svc-"))
    url = None
    if backend == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"svc{next(_db_counter)}")
    # A test module may set SERVICE_ARGS, e.g. ["--report-min-interval", "0"].
    extra = list(getattr(request.module, "SERVICE_ARGS", []))
    return ServiceProcess(data_dir=data_dir, database_url=url, extra_args=extra)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request):
    """One live service per test module and storage backend; tests use distinct names."""
    with running(_service_for(request.param, request)) as svc:
        yield svc


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_service(request):
    """A live service of its own, for tests that restart it or count everything in it."""
    with running(_service_for(request.param, request)) as svc:
        yield svc


@pytest.fixture
def iot(service):
    return service.client()


@pytest.fixture
def jetstream():
    """A plain single nats-server with JetStream, of the test's own (cluster-mode tests)."""
    from tests.support.jetstream import SingleJetStream

    server = SingleJetStream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mosquitto():
    broker = Mosquitto()
    broker.start()
    yield broker
    broker.stop()

