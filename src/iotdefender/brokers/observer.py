"""Who the broker tells what it sees (cloud-side metrics), and the observer for when nobody listens.

The cloud-side metrics service is the observer when ``--cloud-metrics`` is on; otherwise the
adapters get ``NULL_OBSERVER`` and never have to ask whether there is one. Whether the plugin
sends its traffic events at all (one message per 50 ms under load) is decided by the same object
(``observes_traffic``), so the question is asked once, at start-up.
"""

from __future__ import annotations

from typing import Protocol


class BrokerObserver(Protocol):
    """``at``: when the broker saw the event (epoch seconds), if it says; else when it is told."""

    def connect_attempt(self, client_id: str | None, address: str | None, ok: bool, at: float | None = None) -> None: ...

    def authorization_failure(self, client_id: str | None, topic: str | None, at: float | None = None) -> None: ...

    def disconnect(self, client_id: str | None, at: float | None = None) -> None: ...

    def message_sent(self, client_id: str | None, topic: str, size: int, at: float | None = None) -> None: ...

    def message_received(self, client_id: str | None, topic: str, at: float | None = None) -> None: ...

    def connections_lost(self, at: float | None = None) -> None:
        """Every connection of the broker ended at once: it died, and told of none of them."""
        ...


class NullObserver:
    """Observes nothing: the broker's events are counted (refusals) but feed no metrics."""

    def connect_attempt(self, client_id: str | None, address: str | None, ok: bool, at: float | None = None) -> None:
        pass

    def authorization_failure(self, client_id: str | None, topic: str | None, at: float | None = None) -> None:
        pass

    def disconnect(self, client_id: str | None, at: float | None = None) -> None:
        pass

    def message_sent(self, client_id: str | None, topic: str, size: int, at: float | None = None) -> None:
        pass

    def message_received(self, client_id: str | None, topic: str, at: float | None = None) -> None:
        pass

    def connections_lost(self, at: float | None = None) -> None:
        pass


NULL_OBSERVER = NullObserver()


def observes_traffic(observer: BrokerObserver) -> bool:
    """Whether anybody wants the per-message events (publishes, deliveries, connections)."""
    return not isinstance(observer, NullObserver)
