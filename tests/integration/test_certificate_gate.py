"""CertificateGate keeps the broker's list of refused certificates (and, under ``--mqtt-certificates
registered``, of those registered ACTIVE) equal to the database's: a write names its certificate and
only that one is read again; a missed notice is made good by the whole list, read at the next period
or when the gate is told anything may have changed.

The broker here records the commands it is given (the plugin's side is tested end to end in
tests/e2e/test_certificates.py)."""

from __future__ import annotations

import asyncio

from iotdefender.brokers.certificate_gate import CertificateGate
from iotdefender.controlplane import registry
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.dispatch import Dispatcher
from iotdefender.store import certificates
from tests.support.certificates import Pki


class CountingGate(CertificateGate):
    whole_reads = 0

    def _read(self, among: list[str] | None, since: float | None = None) -> certificates.Standing:
        self.whole_reads += among is None and since is None
        return super()._read(among, since)


class RecordingBroker:
    """What MosquittoBroker keeps of the commands it sends its plugin (a deny takes a certificate off
    the accepted, an accept off the refused, an allow off both)."""

    def __init__(self, registered_certificates_only: bool = False) -> None:
        self.registered_certificates_only = registered_certificates_only
        self.denied: dict[str, str] = {}
        self.accepted: set[str] = set()
        self.attached: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.commands: list[tuple[str, str]] = []

    def deny_certificates(self, refused: dict[str, str]) -> None:
        self.denied.update(refused)
        self.accepted.difference_update(refused)
        self.commands += [("deny", certificate_id) for certificate_id in refused]

    def allow_certificates(self, certificate_ids) -> None:  # type: ignore[no-untyped-def]
        for certificate_id in certificate_ids:
            self.denied.pop(certificate_id, None)
            self.accepted.discard(certificate_id)
            self.commands.append(("allow", certificate_id))

    def accept_certificates(self, certificate_ids) -> None:  # type: ignore[no-untyped-def]
        for certificate_id in certificate_ids:
            self.denied.pop(certificate_id, None)
            self.accepted.add(certificate_id)
            self.commands.append(("accept", certificate_id))

    def attach_certificates(self, attachments) -> None:  # type: ignore[no-untyped-def]
        for certificate_id, (name, things) in attachments.items():
            if things:
                self.attached[certificate_id] = (name, things)
            else:
                self.attached.pop(certificate_id, None)
            self.commands.append(("things", certificate_id))

    @property
    def attached_certificates(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return dict(self.attached)

    @property
    def denied_certificates(self) -> dict[str, str]:
        return dict(self.denied)

    @property
    def accepted_certificates(self) -> frozenset[str]:
        return frozenset(self.accepted)


async def _settled(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


def test_each_write_reads_its_certificate_and_a_missed_one_is_made_good(engine, tmp_path):
    call = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: None).call_by_name
    pki = Pki(tmp_path, "127.0.0.1")
    pems = {name: pki.issue(name)[0].read_text() for name in ("a", "b", "c")}
    ids = {name: call("RegisterCertificateWithoutCA", {"certificatePem": pem, "status": "ACTIVE"})["certificateId"]
           for name, pem in pems.items()}
    broker = RecordingBroker()
    gate = CountingGate(engine, broker, period_s=60)

    async def scenario() -> None:
        runner = asyncio.ensure_future(gate.run())

        async def settled(expected: dict[str, str]) -> None:
            for _ in range(100):
                if broker.denied == expected:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{broker.denied} != {expected}")

        await asyncio.sleep(0.1)
        assert broker.denied == {}
        for name, status in (("a", "INACTIVE"), ("b", "REVOKED")):
            params = {"certificateId": ids[name].upper(), "newStatus": status}  # as a client may write it
            call("UpdateCertificate", params)
            gate.written("UpdateCertificate", params)
        await settled({ids["a"]: "a", ids["b"]: "b"})
        broker.commands.clear()
        params = {"certificateId": ids["a"], "newStatus": "ACTIVE"}
        call("UpdateCertificate", params)
        gate.written("UpdateCertificate", params)
        await settled({ids["b"]: "b"})
        assert broker.commands == [("allow", ids["a"])]  # only what the write changed
        assert gate.whole_reads == 1  # at its start: each write read its own certificate
        # A write this gate was not told of (another node's, its notice lost) is found when the
        # whole list is read: after a reconnection to NATS, as here, or at the next period.
        with engine.begin() as conn:
            certificates.update(conn, ids["c"], status="INACTIVE")
        gate.changed()
        await settled({ids["b"]: "b", ids["c"]: "c"})
        assert gate.whole_reads == 2
        # Registering names its certificate by its PEM.
        params = {"certificatePem": pki.issue("d")[0].read_text(), "status": "REVOKED"}
        d = call("RegisterCertificateWithoutCA", params)["certificateId"]
        gate.written("RegisterCertificateWithoutCA", params)
        await settled({ids["b"]: "b", ids["c"]: "c", d: "d"})
        # Deleted, a certificate stays refused.
        for operation, params in (("UpdateCertificate", {"certificateId": ids["c"], "newStatus": "ACTIVE"}),
                                  ("DeleteCertificate", {"certificateId": ids["b"]})):
            call(operation, params)
            gate.written(operation, params)
        await settled({ids["b"]: "b", d: "d"})
        assert gate.whole_reads == 2
        runner.cancel()

    asyncio.run(scenario())


def test_under_registered_only_the_broker_is_told_every_active_certificate_and_each_change(engine, tmp_path):
    """``--mqtt-certificates registered``: only certificates registered ACTIVE connect, so the broker
    holds those too: all at start, then each write's certificate as it comes in or out of ACTIVE.
    A certificate never registered is in neither list (the plugin refuses it as unregistered)."""
    call = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: None).call_by_name
    pki = Pki(tmp_path, "127.0.0.1")
    ids = {name: call("RegisterCertificateWithoutCA", {"certificatePem": pki.issue(name)[0].read_text(),
                                                       "status": status})["certificateId"]
           for name, status in (("a", "ACTIVE"), ("b", "ACTIVE"), ("c", "INACTIVE"))}
    broker = RecordingBroker(registered_certificates_only=True)
    gate = CountingGate(engine, broker, period_s=60)

    async def scenario() -> None:
        runner = asyncio.ensure_future(gate.run())
        await _settled(lambda: broker.accepted == {ids["a"], ids["b"]} and broker.denied == {ids["c"]: "c"},
                       f"at start: accepted {broker.accepted}, denied {broker.denied}")
        broker.commands.clear()
        for operation, params in (("UpdateCertificate", {"certificateId": ids["a"], "newStatus": "REVOKED"}),
                                  ("UpdateCertificate", {"certificateId": ids["c"], "newStatus": "ACTIVE"})):
            call(operation, params)
            gate.written(operation, params)
        await _settled(lambda: broker.accepted == {ids["b"], ids["c"]} and broker.denied == {ids["a"]: "a"},
                       f"after the writes: accepted {broker.accepted}, denied {broker.denied}")
        assert sorted(broker.commands) == sorted([("deny", ids["a"]), ("accept", ids["c"])])
        params = {"certificatePem": pki.issue("d")[0].read_text(), "status": "ACTIVE"}
        d = call("RegisterCertificateWithoutCA", params)["certificateId"]
        gate.written("RegisterCertificateWithoutCA", params)
        await _settled(lambda: d in broker.accepted, "a certificate registered ACTIVE was not accepted")
        # A change this gate was not told of is made good by the whole lists.
        with engine.begin() as conn:
            certificates.update(conn, ids["b"], status="INACTIVE")
        gate.changed()
        await _settled(lambda: broker.accepted == {ids["c"], d} and set(broker.denied) == {ids["a"], ids["b"]},
                       f"after the whole read: accepted {broker.accepted}, denied {broker.denied}")
        assert gate.whole_reads == 2
        runner.cancel()

    asyncio.run(scenario())


def test_a_quiet_period_reads_what_was_written_since_and_every_tenth_the_whole_lists(engine, tmp_path):
    """A notice lost (another node's write) is made good within a period by reading the
    certificates written since the last read began; the whole lists, which a large registry makes
    costly, only every WHOLE_EVERY periods, for what the writers' stamps cannot show."""
    import time

    from iotdefender.brokers.certificate_gate import WHOLE_EVERY

    call = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: None).call_by_name
    pki = Pki(tmp_path, "127.0.0.1")
    ids = {name: call("RegisterCertificateWithoutCA", {"certificatePem": pki.issue(name)[0].read_text(),
                                                       "status": "ACTIVE"})["certificateId"]
           for name in ("stamped", "by-hand")}
    broker = RecordingBroker()
    gate = CountingGate(engine, broker, period_s=0.1)

    async def scenario() -> None:
        runner = asyncio.ensure_future(gate.run())
        await _settled(lambda: gate.whole_reads == 1, "the whole lists read at start")
        with engine.begin() as conn:  # another node's write, its notice lost: stamped as writes are
            certificates.update(conn, ids["stamped"], status="INACTIVE", last_modified_date=time.time())
        await _settled(lambda: ids["stamped"] in broker.denied, "the write found by a period's read")
        assert gate.whole_reads == 1  # ... without reading the whole lists
        with engine.begin() as conn:  # changed by hand, stamped long before (or by a clock far behind)
            certificates.update(conn, ids["by-hand"], status="REVOKED", last_modified_date=time.time() - 3600)
        await asyncio.sleep(0.1 * WHOLE_EVERY / 2)
        assert ids["by-hand"] not in broker.denied  # a period's read cannot see it
        await _settled(lambda: ids["by-hand"] in broker.denied, "found by the whole read")
        assert gate.whole_reads == 2
        runner.cancel()

    asyncio.run(scenario())


def test_a_start_under_registered_only_with_no_active_certificate_says_no_device_can_connect(engine):
    """The likely mistake: the flag given before the fleet's certificates were registered."""
    from structlog.testing import capture_logs

    async def scenario() -> list[dict]:
        with capture_logs() as logs:
            gate = CertificateGate(engine, RecordingBroker(registered_certificates_only=True), period_s=60)
            await gate.refresh()
            await gate.refresh()
        return logs

    warnings = [entry for entry in asyncio.run(scenario()) if entry["event"] == "mqtt_no_certificate_registered_active"]
    assert len(warnings) == 1 and "no device can connect" in warnings[0]["detail"]


def test_the_broker_is_told_which_things_each_certificate_is_attached_to(engine, tmp_path):
    """AttachThingPrincipal and DetachThingPrincipal name their certificate, which is read again
    with its things and common name; one detached from all is told attached to none; an
    attachment whose notice was lost is found by a period's read (its things_modified_date)."""
    import time

    call = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: None).call_by_name
    pki = Pki(tmp_path, "127.0.0.1")
    registered = {name: call("RegisterCertificateWithoutCA", {"certificatePem": pki.issue(name)[0].read_text(),
                                                              "status": status})
                  for name, status in (("cn-a", "ACTIVE"), ("cn-b", "INACTIVE"))}
    arn = {name: answer["certificateArn"] for name, answer in registered.items()}
    ids = {name: answer["certificateId"] for name, answer in registered.items()}
    for thing in ("t1", "t2", "t3"):
        call("CreateThing", {"thingName": thing})
    call("AttachThingPrincipal", {"thingName": "t1", "principal": arn["cn-a"]})
    broker = RecordingBroker()
    gate = CountingGate(engine, broker, period_s=0.1)

    def write(operation: str, params: dict) -> None:
        call(operation, params)
        gate.written(operation, params)

    async def scenario() -> None:
        runner = asyncio.ensure_future(gate.run())
        await _settled(lambda: broker.attached == {ids["cn-a"]: ("cn-a", ("t1",))}, f"at start: {broker.attached}")
        write("AttachThingPrincipal", {"thingName": "t2", "principal": arn["cn-a"]})
        write("AttachThingPrincipal", {"thingName": "t3", "principal": arn["cn-b"]})  # not ACTIVE: told all the same
        await _settled(lambda: broker.attached == {ids["cn-a"]: ("cn-a", ("t1", "t2")), ids["cn-b"]: ("cn-b", ("t3",))},
                       f"after attaching: {broker.attached}")
        broker.commands.clear()
        write("DetachThingPrincipal", {"thingName": "t3", "principal": arn["cn-b"]})
        await _settled(lambda: ids["cn-b"] not in broker.attached, f"after detaching: {broker.attached}")
        assert broker.commands == [("things", ids["cn-b"])]  # only the certificate written
        # Another node's attachment whose notice was lost: stamped, so a period's read finds it.
        with engine.begin() as conn:
            from iotdefender.store import thing_principals
            thing_principals.detach(conn, "t1", ids["cn-a"], time.time())
        await _settled(lambda: broker.attached == {ids["cn-a"]: ("cn-a", ("t2",))}, f"after the period: {broker.attached}")
        assert gate.whole_reads == 1
        runner.cancel()

    asyncio.run(scenario())


def test_a_certificate_the_service_created_is_read_by_the_id_its_answer_gave(engine, tmp_path):
    """CreateKeysAndCertificate's input names no certificate: the gate takes the id from its output
    (else it would read every certificate at each create). Created INACTIVE, it is refused at once."""
    from iotdefender.controlplane.issuer import CertificateIssuer

    pki = Pki(tmp_path, "127.0.0.1")
    context = ServiceContext(engine=engine, issuer=CertificateIssuer.from_files(pki.ca_cert, pki.ca_key))
    call = Dispatcher(context, registry.IMPLEMENTED, lambda: None).call_by_name
    broker = RecordingBroker()
    gate = CountingGate(engine, broker, period_s=60)

    async def scenario() -> None:
        runner = asyncio.ensure_future(gate.run())
        await _settled(lambda: gate.whole_reads == 1, "the whole lists read at start")
        output = call("CreateKeysAndCertificate", {})
        gate.written("CreateKeysAndCertificate", {}, output)
        await _settled(lambda: broker.denied == {output["certificateId"]: "AWS IoT Certificate"},
                       f"the created INACTIVE certificate refused: {broker.denied}")
        assert gate.whole_reads == 1
        runner.cancel()

    asyncio.run(scenario())
