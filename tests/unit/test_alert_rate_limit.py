"""Alert delivery rate limit: a token bucket per destination, bursts delayed, never dropped."""

from __future__ import annotations

from iotdefender.alerts import outbox
from iotdefender.alerts.outbox import TokenBucket, sign


def test_bucket_allows_a_burst_then_the_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(outbox.time, "monotonic", lambda: now[0])
    bucket = TokenBucket(rate=20, burst=20)
    assert sum(bucket.take() for _ in range(50)) == 20  # the burst
    now[0] += 0.5
    assert sum(bucket.take() for _ in range(50)) == 10  # 20/s for half a second
    now[0] += 10
    assert sum(bucket.take() for _ in range(50)) == 20  # never more than the burst after a pause


def test_webhook_signature_covers_timestamp_and_body():
    assert sign("k", "1700000000", b"{}") != sign("k", "1700000001", b"{}")
    assert sign("k", "1700000000", b"{}") != sign("k", "1700000000", b"{ }")
    assert sign("k", "1", b"x").startswith("sha256=") and len(sign("k", "1", b"x")) == 7 + 64
