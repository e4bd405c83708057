"""The detection worker process outlives the thread that asked for it.

PR_SET_PDEATHSIG (the worker dies with the service) fires when the *thread* that started the child
ends. The service starts and restarts workers from pool threads that end when idle, so the store
starts children from a thread of its own; a child started on behalf of a short-lived thread must
keep working after that thread is gone.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.local_store import PipelineConfig
from iotdefender.pipeline.worker import WorkerConfig
from iotdefender.pipeline.worker_client import WorkerBatchStore
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head

PIPELINE = PipelineConfig(arn_prefix="arn:aws:iot:us-east-1:123456789012:", invalidation_period=172800.0,
                          time_scale=1.0, alert_routes=AlertRoutes())


def test_worker_survives_the_thread_that_started_it():
    url = sqlite_url(Path(tempfile.mkdtemp()))
    upgrade_to_head(create_engine(url))
    store = WorkerBatchStore(WorkerConfig(database_url=url, log_format="json", pipeline=PIPELINE),
                             on_events=lambda events: None)
    starter = threading.Thread(target=store.start)
    starter.start()
    starter.join()  # the thread that asked for the child is gone
    first = store._process
    time.sleep(1.0)
    try:
        assert first is not None and first.is_alive()
        assert store.store_batch([("t-1", {"aws:num-listening-tcp-ports": {"count": 1}}, time.time(), 1)]) == []
        assert store._process is first  # the same child answered: it was never restarted
    finally:
        store.close()
    assert not first.is_alive()


def test_a_worker_that_cannot_start_is_an_outage_not_a_culprit(tmp_path):
    """A child that dies while loading the alarm states (its database is gone) fails no item of the
    batch: the batch is answered as an outage at once, not bisected into one restart per item."""
    import pytest

    from iotdefender.pipeline.batch_isolation import store_isolating
    from iotdefender.store.availability import StoreUnavailable

    gone = sqlite_url(tmp_path / "missing" / "dir")
    store = WorkerBatchStore(WorkerConfig(database_url=gone, log_format="json", pipeline=PIPELINE),
                             on_events=lambda events: None)
    try:
        with pytest.raises(StoreUnavailable):
            store.start()
        items = [(f"t-{n}", {"aws:num-listening-tcp-ports": {"count": 1}}, time.time(), 1) for n in range(8)]
        outcome = store_isolating(store.store_batch, items)
        assert outcome.failed == {} and sorted(outcome.unavailable) == list(range(8))
    finally:
        store.close()


def test_the_service_counts_the_events_the_worker_reports_back(tmp_path):
    """Evaluation happens in the child, but the violation counters that /metrics serves are the
    service's: the worker's store hands each batch's events to the service's listener."""
    from iotdefender.engine.alarm import EventType
    from iotdefender.pipeline.counters import COUNTERS, counting
    from iotdefender.service import build_api
    from iotdefender.settings import Settings

    api = build_api(Settings(data_dir=tmp_path))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "in-worker", "behaviors": [
        {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}, "consecutiveDatapointsToAlarm": 1}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "in-worker",
                                         "securityProfileTargetArn": PIPELINE.arn_prefix + "all/things"})
    url = api.context.engine.url.render_as_string(hide_password=False)
    woken: list[int] = []
    counter = COUNTERS[EventType.IN_ALARM].labels("in-worker", "few-ports")
    before = counter._value.get()
    store = WorkerBatchStore(WorkerConfig(database_url=url, log_format="json", pipeline=PIPELINE),
                             on_events=counting(lambda: woken.append(1)))
    store.start()
    try:
        events = store.store_batch([(f"t-{n}", {"aws:num-listening-tcp-ports": {"count": 7}}, time.time(), 1)
                                    for n in range(3)])
    finally:
        store.close()
    assert events == [("in-alarm", "in-worker", "few-ports")] * 3
    assert counter._value.get() - before == 3 and woken == [1]


def test_the_first_worker_is_the_standby_started_before_the_store():
    """``serve`` spawns a worker before importing itself (worker_standby.py); the store's first start
    hands that child its config instead of spawning another, and the child stores batches."""
    from iotdefender.pipeline.worker_standby import WorkerStandby

    url = sqlite_url(Path(tempfile.mkdtemp()))
    upgrade_to_head(create_engine(url))
    standby = WorkerStandby.start()
    store = WorkerBatchStore(WorkerConfig(database_url=url, log_format="json", pipeline=PIPELINE),
                             on_events=lambda events: None, standby=standby)
    try:
        store.start()
        assert store._process is standby._process
        assert store.store_batch([("t-1", {"aws:num-listening-tcp-ports": {"count": 1}}, time.time(), 1)]) == []
        assert store._process is standby._process
    finally:
        store.close()
    assert not standby._process.is_alive()


def test_a_standby_that_died_is_replaced_by_a_worker_started_as_usual():
    from iotdefender.pipeline.worker_standby import WorkerStandby

    url = sqlite_url(Path(tempfile.mkdtemp()))
    upgrade_to_head(create_engine(url))
    standby = WorkerStandby.start()
    standby._process.kill()
    standby._process.join()
    store = WorkerBatchStore(WorkerConfig(database_url=url, log_format="json", pipeline=PIPELINE),
                             on_events=lambda events: None, standby=standby)
    try:
        store.start()
        assert store._process is not standby._process and store._process.is_alive()
        assert store.store_batch([("t-1", {"aws:num-listening-tcp-ports": {"count": 1}}, time.time(), 1)]) == []
    finally:
        store.close()


def test_a_standby_never_taken_ends_when_discarded_or_when_the_store_closes():
    from iotdefender.pipeline.worker_standby import WorkerStandby

    discarded = WorkerStandby.start()
    discarded.discard()
    assert not discarded._process.is_alive()
    unused = WorkerStandby.start()
    store = WorkerBatchStore(WorkerConfig(database_url="sqlite://", log_format="json", pipeline=PIPELINE),
                             on_events=lambda events: None, standby=unused)
    store.close()  # never started
    assert not unused._process.is_alive()



# Each runs in an interpreter of its own, as the command line: a lone main thread (a test runner
# has threads of its own, and a standby is then spawned).
FORKED_STANDBY_STORES = """
import tempfile, time
from pathlib import Path
from iotdefender.pipeline.worker_standby import WorkerStandby

standby = WorkerStandby.start()  # as the command line does: before anything else runs
assert standby.forked, "a lone main thread on Linux forks"
from iotdefender.pipeline.worker import WorkerConfig
from iotdefender.pipeline.worker_client import WorkerBatchStore
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head
from tests.integration.test_batch_store_process import PIPELINE

url = sqlite_url(Path(tempfile.mkdtemp()))
upgrade_to_head(create_engine(url))
store = WorkerBatchStore(WorkerConfig(database_url=url, log_format="json", pipeline=PIPELINE),
                         on_events=lambda events: None, standby=standby)
store.start()
assert store._process is standby._process
assert store.store_batch([("t-1", {"aws:num-listening-tcp-ports": {"count": 1}}, time.time(), 1)]) == []
store.close()
assert standby._process.exitcode == 0, standby._process.exitcode
assert not WorkerStandby.start().forked, "the store's thread runs: a fork now would not be safe"
print("ok")
"""

FORKED_STANDBY_ENDS_AT_EOF = """
from iotdefender.pipeline.worker_standby import WorkerStandby

idle = WorkerStandby.start()
assert idle.forked
idle._pipe.close()
idle._process.join(10)
assert idle._process.exitcode == 0, idle._process.exitcode
print("ok")
"""


def _run_alone(script: str) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1:] == ["ok"], done.stdout


def test_the_command_line_forks_its_standby_which_imports_nothing_again_and_stores_batches():
    """Started from a lone main thread (the command line), the standby is forked after importing the
    worker's modules; it stores batches like a spawned one. Once other threads run, a standby is
    spawned instead."""
    _run_alone(FORKED_STANDBY_STORES)


def test_a_forked_standby_ends_when_the_parent_closes_its_end_of_the_pipe():
    """The fork copied the parent's end of the pipe into the child; the child closes that copy, or the
    parent closing its own would never reach it as the end of the pipe."""
    _run_alone(FORKED_STANDBY_ENDS_AT_EOF)
