"""CertificateGate keeps the broker's list of refused certificates equal to the database's: a write
names its certificate and only that one is read again; a missed notice is made good by the whole
list, read at the next period or when the gate is told anything may have changed.

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

    def _read_all(self) -> dict[str, str]:
        self.whole_reads += 1
        return super()._read_all()


class RecordingBroker:
    def __init__(self) -> None:
        self.denied: dict[str, str] = {}
        self.commands: list[tuple[str, str]] = []

    def deny_certificates(self, refused: dict[str, str]) -> None:
        self.denied.update(refused)
        self.commands += [("deny", certificate_id) for certificate_id in refused]

    def allow_certificates(self, certificate_ids) -> None:  # type: ignore[no-untyped-def]
        for certificate_id in certificate_ids:
            self.denied.pop(certificate_id, None)
            self.commands.append(("allow", certificate_id))

    @property
    def denied_certificates(self) -> dict[str, str]:
        return dict(self.denied)


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
