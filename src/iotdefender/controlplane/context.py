"""What every control-plane operation needs: the database, the identity of this "account", a clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class ServiceContext:
    engine: Engine
    region: str = "us-east-1"
    account_id: str = "123456789012"
    clock: Callable[[], float] = field(default=time.time)
    endpoint_address: str | None = None  # DescribeEndpoint's answer (--endpoint-address); None: the request's host

    def arn(self, resource: str) -> str:
        """``arn:aws:iot:{region}:{account}:{resource}``, the form every AWS IoT ARN takes."""
        return f"arn:aws:iot:{self.region}:{self.account_id}:{resource}"

    def now(self) -> float:
        """Epoch seconds rounded to the millisecond, the precision AWS returns."""
        return round(self.clock(), 3)
