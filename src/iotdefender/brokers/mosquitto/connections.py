"""The MQTT clients connected to this node's Mosquitto, from the plugin's connect and disconnect events.

The plugin reports a successful CONNECT (``C`` with ok ``1``) for every device (never the service's
own connection) and a DISCONNECT only for the connection that owns its client id: a refused
CONNECT is no connection, and the older connection closed by a takeover (a device reconnecting
with its client id) is not reported at all, the newer one replacing it. A set of client ids
follows that exactly; counting +1/-1 would drift by one per takeover.

Mosquitto restarted by the supervisor has lost every connection without a DISCONNECT: the broker
``reset``s the set when it starts a process. The events arrive in batches up to ~50 ms after the
fact, and a batch the service's connection missed (it was reconnecting) is lost: the gauge is
then off until those clients come and go again.
"""

from __future__ import annotations

from prometheus_client import Gauge

MQTT_CONNECTED = Gauge("iotdefender_mqtt_connected_clients",
                       "MQTT clients connected to this node's broker (the service's own connection not counted)")


class ConnectedClients:
    """The client ids connected now, their number on ``iotdefender_mqtt_connected_clients``."""

    def __init__(self, gauge: Gauge = MQTT_CONNECTED) -> None:
        self._gauge = gauge
        self._clients: set[str] = set()
        gauge.set(0)

    def connected(self, client_id: str) -> None:
        self._clients.add(client_id)
        self._gauge.set(len(self._clients))

    def disconnected(self, client_id: str) -> None:
        self._clients.discard(client_id)
        self._gauge.set(len(self._clients))

    def reset(self) -> None:
        """Mosquitto (re)started: nobody is connected."""
        self._clients.clear()
        self._gauge.set(0)

    def __len__(self) -> int:
        return len(self._clients)
