"""Each device's latest value on a real SQLite file and a real PostgreSQL: whatever the state of
``metric_latest`` (empty, partly folded, folded, pruned), ``read_latest`` gives what a fold of
every stored datapoint of the range gives.
"""

from __future__ import annotations

import random

import sqlalchemy as sa

from iotdefender.store import history
from iotdefender.store.database import writing
from iotdefender.store.latest_values import LatestValues, read_latest
from iotdefender.store import metric_values
from iotdefender.store.metric_values import RetainedReport, insert_reports
from iotdefender.store.schema import metric_latest, metric_segments
from tests.integration.test_history import as_set

PORTS = "aws:num-listening-tcp-ports"
CPU = "cpu"


def fleet_reports(rng: random.Random, first_ts: float, count: int, devices: int) -> list[RetainedReport]:
    """Reports of a fleet where devices stop, two reports may share a time, and not every report
    carries every metric."""
    out = []
    ts = first_ts
    for _ in range(count):
        ts += rng.choice([0.0, 0.5, 1.0])  # equal times: the later report is the latest
        thing = f"dev-{rng.randrange(devices)}"
        datapoints: dict = {PORTS: {"count": rng.randrange(100)}, "aws:listening-tcp-ports": {"ports": [22]}}
        if rng.random() < 0.6:
            datapoints[CPU] = {"number": rng.random()}
        out.append(RetainedReport(thing, ts, datapoints))
    return out


def expected(stored: list[RetainedReport], series: str, start: float, end: float) -> dict[str, float]:
    """The reference: each device's datapoint of the greatest time in the range, the later stored
    of equal times."""
    latest: dict[str, tuple[float, float]] = {}
    for report in stored:
        value = report.datapoints.get(series)
        if value is None or not start <= report.ts <= end:
            continue
        number = float(value.get("count", value.get("number")))
        if report.thing_name not in latest or report.ts >= latest[report.thing_name][0]:
            latest[report.thing_name] = (report.ts, number)
    return {thing: value for thing, (_, value) in latest.items()}


def read(engine, series: str, start: float, end: float = 1e12) -> dict[str, float]:
    assert end == 1e12  # a range ending now (read_latest has no end)
    with engine.connect() as conn:
        names, values = read_latest(conn, series, start)
    assert len(names) == len(set(names))
    return dict(zip(names, values.tolist()))


def store(engine, reports: list[RetainedReport]) -> None:
    with writing(engine) as conn:
        insert_reports(conn, reports)


def compact(engine) -> None:
    with engine.connect() as conn:
        top = history.max_row_id(conn)
    history.compact_until(engine, top)


def kept_rows(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(metric_latest.c.series, metric_latest.c.up_to_segment)).all())


def test_every_state_of_the_table_reads_the_same_latest_values(engine, monkeypatch) -> None:
    monkeypatch.setattr(history, "ROWS_PER_SEGMENT", 37)  # many segments
    rng = random.Random(5)
    stored: list[RetainedReport] = []
    latest = LatestValues(engine, points_per_step=60, budget_s=0.0)  # a couple of segments a refresh, one series
    checks = 0
    for step in range(8):
        batch = fleet_reports(rng, 1000.0 + 400 * step, 300, devices=25 if step < 4 else 12)  # then 13 stop
        store(engine, batch)
        stored += batch
        if step % 3 != 2:  # some rows are left uncompacted
            compact(engine)
        if step >= 2:
            latest.refresh()
        for series in (PORTS, CPU):
            for start in (0.0, 1000.0 + 400 * step - 150, 1000.0 + 400 * step + 100):
                assert read(engine, series, start, 1e12) == expected(stored, series, start, 1e12), (step, series)
                checks += 1
    rows = kept_rows(engine)
    assert set(rows) == {"", PORTS, CPU}
    with engine.connect() as conn:
        newest = conn.execute(sa.select(sa.func.max(metric_segments.c.id))).scalar()
    assert 0 < rows[PORTS] < newest  # partly folded: the reads above folded the rest themselves
    compact(engine)
    for _ in range(100):
        latest.refresh()
    with engine.connect() as conn:  # caught up: what is left is fewer datapoints than devices held
        for series, up_to in kept_rows(engine).items():
            if series:
                held = conn.execute(sa.select(sa.func.length(metric_latest.c.times))
                                    .where(metric_latest.c.series == series)).scalar() // 8
                pending = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(metric_segments.c.points), 0)).where(
                    metric_segments.c.series == series, metric_segments.c.id > up_to)).scalar()
                assert 0 < held and pending < held, (series, held, pending)
    for series in (PORTS, CPU):
        assert read(engine, series, 0.0, 1e12) == expected(stored, series, 0.0, 1e12)
    assert checks == 48


def test_a_fold_is_not_rewritten_for_fewer_datapoints_than_it_holds(engine) -> None:
    rng = random.Random(2)
    store(engine, fleet_reports(rng, 1000.0, 400, devices=200))
    compact(engine)
    latest = LatestValues(engine)
    assert latest.refresh() == 2  # both numeric series folded
    first = kept_rows(engine)
    store(engine, fleet_reports(rng, 2000.0, 20, devices=200))  # 20 datapoints for a row of ~200 devices
    compact(engine)
    assert latest.refresh() == 0
    assert kept_rows(engine)[PORTS] == first[PORTS]
    stored_after = fleet_reports(rng, 3000.0, 400, devices=200)
    store(engine, stored_after)
    compact(engine)
    assert latest.refresh() >= 1
    assert kept_rows(engine)[PORTS] > first[PORTS]


def test_devices_older_than_the_retained_history_leave_the_fold(engine) -> None:
    old = [RetainedReport(f"gone-{i}", 100.0 + i, {PORTS: {"count": i}}) for i in range(5)]
    store(engine, old)
    compact(engine)
    new = [RetainedReport(f"dev-{i % 3}", 5000.0 + i, {PORTS: {"count": i}}) for i in range(30)]
    store(engine, new)
    compact(engine)
    latest = LatestValues(engine)
    latest.refresh()
    assert read(engine, PORTS, 0.0, 1e12) == expected(old + new, PORTS, 0.0, 1e12)
    with writing(engine) as conn:  # retention: the old segments go
        history.delete_segments_older_than(conn, 1000.0)
    store(engine, [RetainedReport(f"dev-{i % 3}", 6000.0 + i, {PORTS: {"count": i}}) for i in range(30)])
    compact(engine)
    latest.refresh()
    with engine.connect() as conn:
        things = conn.execute(sa.select(metric_latest.c.things).where(metric_latest.c.series == PORTS)).scalar()
    assert b"gone-" not in things
    assert set(read(engine, PORTS, 0.0, 1e12)) == {"dev-0", "dev-1", "dev-2"}


def test_of_datapoints_at_one_time_the_later_stored_is_the_latest(engine) -> None:
    latest = LatestValues(engine)
    for value, folded, compacted in ((1, True, True), (2, False, True), (3, False, False)):
        store(engine, [RetainedReport("dev-0", 10.0, {PORTS: {"count": value}})])
        if compacted:
            compact(engine)
        if folded:
            latest.refresh()
            assert kept_rows(engine)[PORTS] > 0
        assert read(engine, PORTS, 0.0, 1e12) == {"dev-0": value}


def test_a_chart_of_more_datapoints_than_it_draws_shows_the_newest(engine) -> None:
    """A device's chart reads its newest datapoints of the range (oldest first): over 14 days a
    5-minute report makes 4,032, and a chart of the first ones stopped in the middle of the range."""
    from iotdefender.store.metric_values import newest_page

    rows = [RetainedReport("dev-0", 100.0 + i, {PORTS: {"count": i}} if i % 4 else {CPU: {"number": 1.0}})
            for i in range(1400)]
    rows += [RetainedReport("dev-1", 100.0 + i, {PORTS: {"count": -1}}) for i in range(50)]
    store(engine, rows)
    with engine.connect() as conn:
        page = newest_page(conn, "dev-0", PORTS, 0.0, 1e12, 700)
        assert [value["count"] for _, _, value in page] == [i for i in range(1400) if i % 4][-700:]
        assert [ts for _, ts, _ in page] == sorted(ts for _, ts, _ in page)
        whole = newest_page(conn, "dev-0", PORTS, 0.0, 1e12, 5000)
        assert len(whole) == 1050
        ranged = newest_page(conn, "dev-0", PORTS, 200.0, 300.0, 5000)
        assert [value["count"] for _, _, value in ranged] == [i for i in range(100, 201) if i % 4]


def test_after_retention_took_everything_new_datapoints_are_compacted_and_folded(engine) -> None:
    """SQLite gives a new row the highest id + 1: once retention deleted every row and segment (a
    silence as long as the retention), new rows and segments took ids the compaction cursor and the
    fold had passed, and were never compacted, read or folded. PostgreSQL never reuses ids; the
    test runs on both."""
    latest = LatestValues(engine)
    store(engine, [RetainedReport(f"old-{i}", 100.0 + i, {PORTS: {"count": i}}) for i in range(40)])
    compact(engine)
    store(engine, [RetainedReport("old-0", 200.0, {PORTS: {"count": 7}})])
    compact(engine)
    latest.refresh()
    assert kept_rows(engine)[PORTS] > 0
    with writing(engine) as conn:  # retention: everything expired
        assert metric_values.delete_older_than(conn, 1000.0) == 41
        while history.delete_segments_older_than(conn, 1000.0):
            pass
    new = [RetainedReport(f"new-{i}", 2000.0 + i, {PORTS: {"count": 100 + i}}) for i in range(3)]
    store(engine, new)
    assert read(engine, PORTS, 0.0) == expected(new, PORTS, 0.0, 1e12)  # not compacted yet
    compact(engine)
    with engine.connect() as conn:
        assert as_set(history.read_series(conn, PORTS, 0.0, 1e12)) == {
            (r.thing_name, r.ts, float(r.datapoints[PORTS]["count"])) for r in new}
    assert read(engine, PORTS, 0.0) == expected(new, PORTS, 0.0, 1e12)
    latest.refresh()  # not due (3 datapoints for a row of 40 devices): the reader leaves the expired out
    assert read(engine, PORTS, 0.0) == expected(new, PORTS, 0.0, 1e12)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(metric_latest.c.up_to_segment))).scalar() <= conn.execute(
            sa.select(sa.func.max(metric_segments.c.id))).scalar()


def test_only_series_read_within_a_week_are_kept_folded(engine) -> None:
    """Every row rewritten costs about as many bytes as its datapoints: a series no one read for a
    week is emptied and left, its reads stay exact (they fold the segments themselves), and a read
    has it kept folded again."""
    from iotdefender.store.latest_values import KEEP_FOLDED_S, mark_read

    now = [1_000_000.0]
    latest = LatestValues(engine, clock=lambda: now[0])
    rng = random.Random(9)
    stored = fleet_reports(rng, 1000.0, 200, devices=10)
    store(engine, stored)
    compact(engine)
    assert latest.refresh() == 2  # both series, new: kept folded for a week unread
    now[0] += KEEP_FOLDED_S / 2
    mark_read(engine, PORTS, now[0])  # PORTS read; CPU not
    now[0] += KEEP_FOLDED_S / 2 + 1
    more = fleet_reports(rng, 2000.0, 200, devices=10)
    store(engine, more)
    compact(engine)
    stored += more
    assert latest.refresh() == 1  # PORTS only
    rows = kept_rows(engine)
    with engine.connect() as conn:
        held = dict(conn.execute(sa.select(metric_latest.c.series, sa.func.length(metric_latest.c.times) / 8)).all())
    assert rows[CPU] == 0 and held[CPU] == 0 and rows[PORTS] > 0 and held[PORTS] == 10
    for series in (PORTS, CPU):
        assert read(engine, series, 0.0) == expected(stored, series, 0.0, 1e12)
    mark_read(engine, CPU, now[0])
    assert latest.refresh() == 1 and kept_rows(engine)[CPU] > 0
    assert read(engine, CPU, 0.0) == expected(stored, CPU, 0.0, 1e12)
    with writing(engine) as conn:  # a row made before the column: counts as read at the next refresh
        conn.execute(metric_latest.update().where(metric_latest.c.series == CPU).values(read_at=None))
    now[0] += KEEP_FOLDED_S - 10
    latest.refresh()
    with engine.connect() as conn:
        assert conn.execute(sa.select(metric_latest.c.read_at).where(metric_latest.c.series == CPU)).scalar() == now[0]
