"""Fencing tokens in real PostgreSQL: a superseded owner's commit is refused, never interleaved."""

from __future__ import annotations

import threading
import time

import pytest

from iotdefender.cluster.fencing import Fenced, check, claim, move
from iotdefender.store.database import create_engine, upgrade_to_head

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres):  # type: ignore[no-untyped-def]
    engine = create_engine(postgres.create_database(f"fence{time.monotonic_ns()}"))
    upgrade_to_head(engine)  # the fences table comes with the store's migrations
    yield engine
    engine.dispose()


def test_a_newer_claim_fences_the_old_token_and_a_claim_never_lowers_the_fence(engine):
    with engine.begin() as conn:
        assert claim(conn, 3, 10)
    with engine.begin() as conn:
        check(conn, 3, 10)
    with engine.begin() as conn:
        assert claim(conn, 3, 20)  # a later owner (a larger KV revision)
    with pytest.raises(Fenced), engine.begin() as conn:
        check(conn, 3, 10)
    with engine.begin() as conn:
        assert not claim(conn, 3, 10)  # the stale owner re-acquiring with its old token is refused
        check(conn, 3, 20)
    with pytest.raises(Fenced), engine.begin() as conn:
        check(conn, 4, 20)  # never claimed: nobody may commit for it


def test_a_claim_waits_for_the_stale_owners_transaction_then_fences_it(engine):
    with engine.begin() as conn:
        claim(conn, 1, 10)
    claimed = threading.Event()

    def new_owner() -> None:
        with engine.begin() as conn:
            claim(conn, 1, 20)
        claimed.set()

    with engine.begin() as stale:
        check(stale, 1, 10)  # the stale owner's batch transaction holds the fence row
        thread = threading.Thread(target=new_owner)
        thread.start()
        assert not claimed.wait(0.5)  # the new owner cannot claim mid-commit...
    thread.join(10)
    assert claimed.is_set()  # ...and claims as soon as that transaction ends, so it loads what it wrote
    with pytest.raises(Fenced), engine.begin() as conn:
        check(conn, 1, 10)


def test_a_fence_moves_to_a_recreated_leases_token_only_if_nobody_claimed_it_meanwhile(engine):
    with engine.begin() as conn:
        claim(conn, 5, 10)
    with engine.begin() as conn:
        assert move(conn, 5, 10, 30)  # the lease expired during an election and was created again
    with engine.begin() as conn:
        check(conn, 5, 30)
        assert not move(conn, 5, 10, 40)  # the old token is gone: no second move from it
    with engine.begin() as conn:
        assert claim(conn, 5, 50)  # another owner took it in between...
    with engine.begin() as conn:
        assert not move(conn, 5, 30, 60)  # ...so the previous owner's state is stale: it must release
        assert not move(conn, 6, 30, 60)  # never claimed
        check(conn, 5, 50)
