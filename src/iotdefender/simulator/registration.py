"""Register simulated devices as things through the AWS API (botocore, like any client)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import botocore.session


def register_things(endpoint_url: str, region: str, things: Iterable[str]) -> int:
    """CreateThing for each name (idempotent for an existing identical thing); returns the count."""
    # botocore builds the operations from the model at run time: no static type to check against.
    iot: Any = botocore.session.get_session().create_client("iot", region_name=region, endpoint_url=endpoint_url)
    count = 0
    for thing in things:
        iot.create_thing(thingName=thing, attributePayload={"attributes": {"simulated": "true"}})
        count += 1
    return count
