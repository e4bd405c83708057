"""Fixtures shared by the suite: real PostgreSQL, a live service on SQLite or on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import hypothesis  # noqa: F401  (imported at start: see below)
import pytest
from xdist.scheduler import LoadFileScheduling

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




# The files that start several processes under load (NATS servers, PostgreSQL, two or three serve
# nodes, kill -9, frozen databases) run in two lanes, and those that drive Chromium in a third: each
# lane is one unit of work (``LaneScheduling``), its files one after another on one worker, so at
# most two cluster files and one browser run at once whatever the number of workers. Every other
# file is a unit of its own, as with ``--dist loadfile``, so its module fixtures start once. The
# lanes are balanced by their files' time in a full run (~360-400 worker-seconds each on 2026-12-04).
# Three workers with every file free to run beside any other took 9:47 but failed three
# timing-bound tests of these files.
_LANES = {
    "cluster-a": ("tests/e2e/test_cluster_serve.py", "tests/e2e/test_cluster_nats3.py",
                  "tests/integration/test_cluster_stand_aside.py", "tests/e2e/test_cluster_nats_events.py",
                  "tests/e2e/test_cluster_frozen_database.py", "tests/e2e/test_cluster_database_away.py"),
    "cluster-b": ("tests/e2e/test_restart_windows.py", "tests/e2e/test_durability.py",
                  "tests/integration/test_cluster_ownership.py", "tests/integration/test_cluster_stream.py",
                  "tests/integration/test_cluster_cloud_windows.py", "tests/e2e/test_cluster_ml.py",
                  "tests/e2e/test_cluster_statistics.py"),
    "browser": ("tests/e2e/test_console_browser.py", "tests/e2e/test_console_pages.py",
                "tests/e2e/test_console_builder.py", "tests/e2e/test_ml_detect.py"),
}
_LANE_OF = {path: lane for lane, paths in _LANES.items() for path in paths}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


class LaneScheduling(LoadFileScheduling):
    """``--dist loadfile`` with the lanes above: a lane's files are one unit of work. Written as a
    scheduler (xdist's ``pytest_xdist_make_scheduler``) rather than with ``xdist_group`` marks:
    ``--dist loadgroup`` finds the groups in the test ids, which xdist 3.8 writes to an attribute
    that pytest 9 no longer reads, so every test was a unit of its own there (a file's module
    fixtures started on several workers, and a test that builds on an earlier one of its file ran
    without it)."""

    def _split_scope(self, nodeid: str) -> str:
        path = _file_of(nodeid)
        return _LANE_OF.get(path, path)


def pytest_xdist_make_scheduler(config, log):  # type: ignore[no-untyped-def]
    return LaneScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """The lanes' tests first, each file's tests in their order: with ``--no-loadscope-reorder``
    the lanes are the first units of work, one to each worker at the start, so the longest units
    run side by side rather than one after another at the end."""
    rank = {lane: n for n, lane in enumerate(_LANES)}
    items.sort(key=lambda item: rank.get(_LANE_OF.get(_file_of(item.nodeid), ""), len(rank)))
