"""What the signed endpoints beyond the AWS model (``/_iotdefender/...``) are served by.

The API is built knowing only these shapes; the service passes in the objects that have them
(the cloud-side intake, the alert outbox, the backtest jobs). An endpoint whose collaborator is
absent answers ``UnknownOperationException``, as an unknown path does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from iotdefender.backtest.runner import BacktestRequest

# POST /_iotdefender/broker-events: the document in, {"accepted", "refused"} out (ValueError if malformed).
BrokerEventIntake = Callable[[Any], dict[str, Any]]
# GET /_iotdefender/alerts/dead: the outbox rows that exhausted their attempts.
DeadLetters = Callable[[], list[dict[str, Any]]]


class BacktestJob(Protocol):
    def document(self, with_result: bool = True) -> dict[str, Any]: ...


class BacktestJobs(Protocol):
    """``/_iotdefender/backtests`` and the console's backtest page."""

    def submit(self, spec: Any) -> BacktestJob: ...

    def get(self, backtest_id: str) -> BacktestJob: ...

    def list(self) -> Sequence[BacktestJob]: ...

    def resolve(self, spec: Any) -> BacktestRequest:
        """Check a request document as ``submit`` does, without queueing it (the builder's preview)."""
        ...


@dataclass(frozen=True)
class Extensions:
    broker_events: BrokerEventIntake | None = None
    dead_letters: DeadLetters | None = None
    backtests: BacktestJobs | None = None
