"""What every control-plane operation needs: the database, the identity of this "account", a clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from iotdefender.controlplane.issuer import CertificateIssuer
from iotdefender.store.advisory import CONTROL_PLANE, serialize
from iotdefender.store.database import writing


@dataclass(frozen=True)
class ServiceContext:
    engine: Engine
    region: str = "us-east-1"
    account_id: str = "123456789012"
    clock: Callable[[], float] = field(default=time.time)
    endpoint_address: str | None = None  # DescribeEndpoint's answer (--endpoint-address); None: the request's host
    issuer: CertificateIssuer | None = None  # the broker's CA with its key (--mqtt-ca-key): CreateKeysAndCertificate

    def arn(self, resource: str) -> str:
        """``arn:aws:iot:{region}:{account}:{resource}``, the form every AWS IoT ARN takes."""
        return f"arn:aws:iot:{self.region}:{self.account_id}:{resource}"

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A control-plane write transaction, one at a time across every api node. Each checks AWS's
        rules against the database and then writes (a thing in at most 10 groups, 50 tags, a
        custom metric in use not deleted, ``expectedVersion``): on PostgreSQL two concurrent ones
        both passed the check (a thing joined 14 groups at once; an update and a delete with the
        same expected version both succeeded). Control-plane writes are few and short; the
        reports and the detection take no part in this lock."""
        with writing(self.engine) as conn:
            serialize(conn, CONTROL_PLANE)
            yield conn

    def now(self) -> float:
        """Epoch seconds rounded to the millisecond, the precision AWS returns."""
        return round(self.clock(), 3)
