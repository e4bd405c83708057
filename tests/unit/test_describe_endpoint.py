"""DescribeEndpoint: the configured address, else the host the request was addressed to."""

from __future__ import annotations

import pytest

from iotdefender.contract.errors import ApiError
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.endpoint import describe_endpoint


def context(address: str | None = None) -> ServiceContext:
    return ServiceContext(engine=None, endpoint_address=address)  # type: ignore[arg-type]  # no storage read


@pytest.mark.parametrize("host, address", [("127.0.0.1:9000", "127.0.0.1"), ("iot.example.com", "iot.example.com"),
                                           ("[::1]:9000", "::1"), ("iot.example.com:443", "iot.example.com")])
def test_the_request_s_host_without_its_port(host: str, address: str):
    assert describe_endpoint(context(), {"endpointType": "iot:Data-ATS"}, request_host=host) == {"endpointAddress": address}
    assert describe_endpoint(context(), {}, request_host=host) == {"endpointAddress": address}  # AWS's default: iot:Data


def test_the_configured_address_wins():
    assert describe_endpoint(context("mqtt.fleet.example"), {"endpointType": "iot:Data"},
                             request_host="10.0.0.5:9000") == {"endpointAddress": "mqtt.fleet.example"}


@pytest.mark.parametrize("endpoint_type, says", [("iot:CredentialProvider", "serves no iot:CredentialProvider"),
                                                 ("iot:Jobs", "serves no iot:Jobs"),
                                                 ("iot:Nope", "Unknown endpointType")])
def test_endpoints_it_does_not_serve_are_an_invalid_request(endpoint_type: str, says: str):
    with pytest.raises(ApiError) as refused:
        describe_endpoint(context(), {"endpointType": endpoint_type}, request_host="h:1")
    assert refused.value.code == "InvalidRequestException" and says in refused.value.message
