"""Work done alone in a cluster: a PostgreSQL advisory lock held for the work (store/advisory.py)."""

from __future__ import annotations

import threading
import time

from iotdefender.store.advisory import run_alone
from iotdefender.store.database import create_engine

KEY = 4242


def test_a_second_node_skips_the_work_while_the_first_does_it_and_does_it_after(postgres):
    url = postgres.create_database(f"adv{time.time_ns()}")
    first, second = create_engine(url), create_engine(url)
    inside, release = threading.Event(), threading.Event()

    def long_work() -> str:
        inside.set()
        release.wait(10)
        return "first"

    holder = threading.Thread(target=lambda: run_alone(first, KEY, long_work))
    holder.start()
    assert inside.wait(10)
    assert run_alone(second, KEY, lambda: "second") is None  # held: skipped at once, not waited for
    release.set()
    holder.join()
    assert run_alone(second, KEY, lambda: "second") == "second"  # released when the work ended


def test_the_lock_is_released_when_the_work_fails(postgres):
    engine = create_engine(postgres.create_database(f"adv{time.time_ns()}"))

    def failing() -> None:
        raise RuntimeError("training failed")

    try:
        run_alone(engine, KEY, failing)
    except RuntimeError:
        pass
    assert run_alone(create_engine(engine.url.render_as_string(hide_password=False)), KEY, lambda: 1) == 1


def test_sqlite_runs_the_work(tmp_path):
    from iotdefender.store.database import sqlite_url
    assert run_alone(create_engine(sqlite_url(tmp_path)), KEY, lambda: 7) == 7


def test_a_singleton_that_loses_its_lock_stops_a_standby_takes_over_and_it_runs_again_later(postgres):
    """cluster/alone.run_while_held: the holder's lock connection ends (here: its backend is
    terminated, as when PostgreSQL restarts or cuts it) -> it stops its service; the standby takes
    the lock and starts; when the standby goes away, the first node starts its service again."""
    import asyncio

    import sqlalchemy as sa

    from iotdefender.cluster.alone import run_while_held
    from tests.support.waiting import eventually

    url = postgres.create_database(f"adv{time.time_ns()}")
    events: list[tuple[str, str]] = []

    def service(node: str):  # type: ignore[no-untyped-def]
        async def start() -> None:
            events.append(("start", node))

        async def stop() -> None:
            events.append(("stop", node))
        return start, stop

    async def go() -> None:
        engines = {node: create_engine(url) for node in "ab"}
        tasks = {node: asyncio.create_task(run_while_held(engines[node], KEY, "test", *service(node), check_s=0.1,
                                                          node=node)) for node in "ab"}
        await eventually(lambda: [e for e in events if e[0] == "start"], 10, "one node started")
        holder = events[0][1]
        standby = "b" if holder == "a" else "a"
        await asyncio.sleep(0.5)
        assert events == [("start", holder)]  # the standby waits
        with engines[standby].connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND "
                                 "granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))
        await eventually(lambda: ("stop", holder) in events and ("start", standby) in events, 10, "taken over")
        tasks[standby].cancel()  # the standby goes away: its finally stops its service and frees the lock
        await asyncio.gather(tasks[standby], return_exceptions=True)
        await eventually(lambda: events.count(("start", holder)) == 2, 10, "the first node started again")
        tasks[holder].cancel()
        await asyncio.gather(tasks[holder], return_exceptions=True)
        assert events[-1] == ("stop", holder)
        for engine in engines.values():
            engine.dispose()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_one_node_at_a_time_deletes_what_expired(postgres, tmp_path):
    """Every detect node runs the retention loop; a round finds the lock held by another node's
    round and deletes nothing (it used to delete the same rows as the other, waiting on its row
    locks), and the next round after it deletes what is left."""
    from iotdefender.service import build_api, retention_round
    from iotdefender.settings import Settings
    from iotdefender.store import metric_values
    from iotdefender.store.advisory import RETENTION

    url = postgres.create_database(f"ret{time.time_ns()}")
    build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        metric_values.insert_reports(conn, [metric_values.RetainedReport("t", 100.0, {"m": {"count": 1}})] * 3)
    inside, release = threading.Event(), threading.Event()

    def other_nodes_round() -> None:
        inside.set()
        release.wait(10)

    holder = threading.Thread(target=lambda: run_alone(create_engine(url), RETENTION, other_nodes_round))
    holder.start()
    assert inside.wait(10)
    assert retention_round(engine, 10_000.0, 3600.0, 3600.0) is None
    release.set()
    holder.join()
    assert retention_round(engine, 10_000.0, 3600.0, 3600.0) == (3, 0, 0, 0, 0, 0)
