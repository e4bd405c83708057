"""DescribeEndpoint: where devices connect, for the scripts that look it up before connecting.

AWS answers a host name per account (``xxxx-ats.iot.REGION.amazonaws.com``); devices connect
to it on 8883 (MQTT over TLS) or 443. Here the devices' broker is the service's own, so the
address is the host name operators give with ``--endpoint-address`` (what a load balancer or DNS
in front of the broker nodes answers to), else the host the API request was addressed to: the
service's API and its broker share a machine on a single box, and an SDK sample that calls
DescribeEndpoint and connects there reaches the broker (on ``--mqtt-tls-port``/``--mqtt-port``,
which the address does not carry, as AWS's does not carry 8883).
"""

from __future__ import annotations

from iotdefender.contract.errors import invalid_request
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params

operation = OperationTable()

DATA_TYPES = ("iot:Data", "iot:Data-ATS")  # AWS's default (no type given) is iot:Data
OTHER_TYPES = ("iot:CredentialProvider", "iot:Jobs")


@operation("DescribeEndpoint", takes_request_host=True)
def describe_endpoint(ctx: ServiceContext, params: Params, request_host: str = "") -> Params:
    endpoint_type = params.get("endpointType") or "iot:Data"
    if endpoint_type in OTHER_TYPES:
        raise invalid_request(f"iotdefender serves no {endpoint_type} endpoint: only the devices' broker "
                              f"({', '.join(DATA_TYPES)})")
    if endpoint_type not in DATA_TYPES:
        raise invalid_request(f"Unknown endpointType {endpoint_type!r}; valid types: "
                              f"{', '.join(DATA_TYPES + OTHER_TYPES)}")
    address = ctx.endpoint_address or _host_of(request_host)
    if not address:
        raise invalid_request("The request named no host, and no --endpoint-address is configured")
    return {"endpointAddress": address}


def _host_of(host_header: str) -> str:
    """The host of a Host header, without its port (``[::1]:9000`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
