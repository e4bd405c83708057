"""Which ``$aws`` subscriptions a device may make on the service's broker (docs/ingest-rejections.md).

Only its own thing's reply filters: ``$aws/things/T/defender/metrics/(json|cbor|+)[/(accepted|rejected|+)]``.
Any other filter starting with ``$`` is refused in the SUBACK (0x80 in MQTT 3.1.1, 0x87 "Not
authorized" in MQTT 5), the connection stays up, and the refusal is counted in
``iotdefender_mqtt_denials_total{reason="subscribe_denied"}`` but not logged.
"""

from __future__ import annotations

import queue
import re
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.support.mqtt import stop_network_loop
from tests.support import plain_http

ALLOWED = ["$aws/things/sub-dev/defender/metrics/json/accepted", "$aws/things/sub-dev/defender/metrics/cbor/rejected",
           "$aws/things/sub-dev/defender/metrics/json/+", "$aws/things/sub-dev/defender/metrics/+/+",
           "$aws/things/sub-dev/defender/metrics/+", "plain/topic/#"]
REFUSED = ["$aws/things/other-dev/defender/metrics/json/accepted", "$aws/things/sub-dev/defender/metrics/#",
           "$aws/things/sub-dev/shadow/update", "$aws/things/+/defender/metrics/json/accepted",
           "$aws/things/sub-dev/defender/metrics/json/other", "$aws/#", "$SYS/#", "$iotdefender/#"]


def subscribe_codes(port: int, protocol: int, filters: list[str], client_id: str = "sub-dev") -> tuple[list[int], bool]:
    """The SUBACK code of each filter, and whether the connection survived the refusals."""
    acknowledged: queue.Queue[list[Any]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.on_subscribe = lambda c, u, mid, reasons, p: acknowledged.put(reasons)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        codes = []
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=1)
            codes.append(acknowledged.get(timeout=10)[0].value)
        return codes, client.is_connected()
    finally:
        client.disconnect()
        stop_network_loop(client)


def denials(service) -> float:  # type: ignore[no-untyped-def]
    text = plain_http.get(service.endpoint + "/metrics").text
    found = re.search(r'^iotdefender_mqtt_denials_total\{reason="subscribe_denied"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
@pytest.mark.parametrize("protocol, refused_code", [(mqtt.MQTTv311, 0x80), (mqtt.MQTTv5, 0x87)])
def test_only_the_own_reply_filters_are_granted_under_dollar_topics(service, protocol, refused_code):
    before = denials(service)
    codes, connected = subscribe_codes(service.mqtt_port, protocol, ALLOWED + REFUSED)
    assert codes[:len(ALLOWED)] == [1] * len(ALLOWED) and codes[len(ALLOWED):] == [refused_code] * len(REFUSED)
    assert connected
    deadline = time.monotonic() + 5
    while denials(service) < before + len(REFUSED) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert denials(service) == before + len(REFUSED)
    assert "$aws/things/other-dev" not in service.log_path.read_text()  # counted, not logged


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_a_client_whose_id_is_a_wildcard_gets_no_wildcard_reply_filter(service):
    """A client id of ``+`` (a certificate's CN, say) matched the thing level ``+`` of
    ``$aws/things/+/defender/metrics/+/+`` as its own, and the SUBACK granted it (an outside-in
    test; each delivery was still checked). A wildcard thing level is no one's own."""
    codes, connected = subscribe_codes(service.mqtt_port, mqtt.MQTTv311,
                                       ["$aws/things/+/defender/metrics/+/+", "$aws/things/+/defender/metrics/json/accepted"],
                                       client_id="+")
    assert codes == [0x80, 0x80] and connected
