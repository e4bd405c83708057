"""What PostgreSQL does with a session whose client went silent (store/database.py).

A node cut off by dropped packets, or stalled, must not keep the rows it locked: the nodes that take
its partitions over wait for those locks. The server's keepalives end a session whose peer is gone;
a transaction left idle ends after a bound whatever sits between client and server.
"""

from __future__ import annotations

import datetime
import functools
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from iotdefender.backtest.runner import BacktestRequest, run_backtest
from iotdefender.store import history
from iotdefender.store.availability import is_unavailable
from iotdefender.store.database import (IDLE_IN_TRANSACTION_S, create_engine, end_session, long_statements,
                                        session_of, upgrade_to_head, writing)
from iotdefender.store.metric_values import RetainedReport, insert_reports


def test_every_session_carries_the_server_side_limits(postgres):
    engine = create_engine(postgres.create_database(f"sess{time.time_ns()}"))
    with engine.connect() as first, engine.connect() as second:  # two pooled connections, each set up
        for conn in (first, second):
            shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar() for name in (
                "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
                "idle_in_transaction_session_timeout")}
            assert shown == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                             "tcp_user_timeout": "10000",
                             "idle_in_transaction_session_timeout": f"{round(IDLE_IN_TRANSACTION_S)}s"}
            conn.commit()
    engine.dispose()


def test_a_round_trip_without_an_answer_ends_its_connection_as_an_outage(postgres):
    """A server that does not answer (here busy in pg_sleep; frozen, it would be silent the same
    way while the kernel acknowledges) fails the statement after the bound, as an outage."""
    engine = create_engine(postgres.create_database(f"sess{time.time_ns()}"), round_trip_timeout_s=0.5)
    with pytest.raises(DBAPIError) as raised, writing(engine) as conn:
        conn.execute(sa.text("SELECT pg_sleep(3)"))
    assert is_unavailable(raised.value) and "no answer from PostgreSQL within 0.5 s" in str(raised.value)
    with engine.connect() as conn:  # the closed connection left the pool; a new one works
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_only_the_lost_session_itself_is_ended_not_a_later_one_with_its_process_id(postgres):
    """``end_session`` names a session by its process id and its start: a session that reuses the
    id (another node's, once the lost one is gone) is left alone and the lost one counts as gone."""
    engine = create_engine(postgres.create_database(f"sess{time.time_ns()}"))
    with engine.connect() as lost, engine.connect() as asking:
        pid, started = session_of(lost)  # type: ignore[misc]
        assert started is not None
        later = started + datetime.timedelta(seconds=1)  # what a reused process id would show
        assert end_session(asking, (pid, later)) is True
        assert lost.execute(sa.text("SELECT 1")).scalar() == 1  # left alone
        assert end_session(asking, (pid, started)) is True
        with pytest.raises(DBAPIError):  # this one was ended
            lost.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_long_statements_are_not_bounded(postgres):
    engine = create_engine(postgres.create_database(f"sess{time.time_ns()}"), round_trip_timeout_s=0.5)
    with long_statements(), engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_sleep(1), 1")).one()[1] == 1
    engine.dispose()


def test_a_transaction_left_idle_frees_its_row_locks_for_the_next_session(postgres):
    url = postgres.create_database(f"sess{time.time_ns()}")
    stalled, taker = create_engine(url, idle_in_transaction_s=0.5), create_engine(url)
    with writing(taker) as conn:
        conn.execute(sa.text("CREATE TABLE fence (partition int PRIMARY KEY, token bigint)"))
        conn.execute(sa.text("INSERT INTO fence VALUES (1, 1)"))
    left = stalled.connect()
    left.execute(sa.text("SELECT token FROM fence WHERE partition = 1 FOR UPDATE"))  # then silence
    took = threading.Event()

    def take_over() -> None:
        with writing(taker) as conn:
            conn.execute(sa.text("UPDATE fence SET token = 2 WHERE partition = 1"))
        took.set()

    started = time.monotonic()
    threading.Thread(target=take_over, daemon=True).start()
    assert took.wait(15), "the idle transaction kept its row lock"
    assert time.monotonic() - started >= 0.3  # it did wait for the lock, then got it
    with pytest.raises(DBAPIError):  # the stalled session was ended, its transaction with it
        left.execute(sa.text("SELECT 1"))
    left.close()
    stalled.dispose()
    taker.dispose()


def test_a_backtest_holds_no_transaction_open_while_it_evaluates(postgres, monkeypatch):
    """Evaluating a series or replaying a batch takes seconds on a large history: with a read
    transaction open meanwhile, the server's bound on idle transactions would end the backtest."""
    url = postgres.create_database(f"sess{time.time_ns()}")
    # The schema and the history are laid down without the bound: on a loaded machine a migration's
    # transaction can sit idle between its statements for longer than 0.3 s.
    setup = create_engine(url)
    upgrade_to_head(setup)
    with writing(setup) as conn:
        insert_reports(conn, [RetainedReport(f"t{i % 3}", 1000.0 + i, {"cpu": {"number": float(i)},
                                                                     "aws:num-connections": {"count": i % 4},
                                                                     "aws:message-byte-size": {"count": 100 + i}})
                              for i in range(12)])
    setup.dispose()
    engine = create_engine(url, idle_in_transaction_s=0.3)
    monkeypatch.setattr(history, "iter_reports", functools.partial(history.iter_reports, batch=4))
    fast = [{"name": "cpu", "metric": "cpu", "criteria": {"comparisonOperator": "greater-than",
                                                         "value": {"number": 5}}},
            {"name": "connections", "metric": "aws:num-connections",
             "criteria": {"comparisonOperator": "greater-than", "value": {"count": 2}}}]
    slow = [{"name": "largest-message", "metric": "aws:message-byte-size",  # a window's maximum: replayed
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 105}, "durationSeconds": 300}}]
    for behaviors, method in ((fast, "vectorised"), (slow, "engine")):
        request = BacktestRequest(behaviors, 0.0, 2000.0, covers=lambda t: True, invalidation_period=1e9)
        result = run_backtest(engine, request, lambda f, m: time.sleep(0.6))  # each step outlasts the bound
        assert [(b["behaviorName"], b["method"], b["datapoints"]) for b in result["behaviors"]] == \
            [(b["name"], method, 12) for b in behaviors]
    engine.dispose()
