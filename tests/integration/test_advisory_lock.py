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
