"""The MQTT clients connected to this node's Mosquitto, as the plugin counts them.

The plugin knows exactly which connection owns each client id (a refused CONNECT is none, and a
takeover, a device reconnecting with its client id, replaces the older connection rather than adding
one) and tells the number in its event batches (an ``N`` record, defender_plugin.c): in the batch
after any change, and after every (re)connection of the service's client.

Before, the service kept a set of client ids from the connect and disconnect events. A batch the
service's connection missed (it was reconnecting) was lost with its events, and the gauge stayed off
until those clients came and went again; the plugin's count is right again with its next batch.
Mosquitto restarted by the supervisor has lost every connection: the broker ``reset``s the count
when it starts a process. The count arrives up to ~50 ms (a batch) after the fact, 100 ms on an idle broker.
"""

from __future__ import annotations

from prometheus_client import Gauge

MQTT_CONNECTED = Gauge("iotdefender_mqtt_connected_clients",
                       "MQTT clients connected to this node's broker (the service's own connection not counted)")


class ConnectedClients:
    """The number of clients connected now, on ``iotdefender_mqtt_connected_clients``."""

    def __init__(self, gauge: Gauge = MQTT_CONNECTED) -> None:
        self._gauge = gauge
        self._count = 0
        gauge.set(0)

    def counted(self, clients: int) -> None:
        """The plugin's count (an ``N`` record)."""
        self._count = clients
        self._gauge.set(clients)

    def reset(self) -> None:
        """Mosquitto (re)started: nobody is connected."""
        self.counted(0)

    def __len__(self) -> int:
        return self._count
