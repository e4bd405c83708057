"""Certificate revocation benchmark: how fast UpdateCertificate cuts devices off a connected fleet,
and what it costs the devices that stay.

A real ``iotdefender serve`` with ``--mqtt-auth cert`` (SQLite, or PostgreSQL with ``--database
postgresql``); ``--devices`` devices, each with its own certificate (ECDSA P-256, signed by the
broker's CA), one mutual-TLS MQTT connection each, subscribed to its replies, spread over processes
(bench/fleet.py), reporting against 3 profiles x 10 behaviors (bench/fleet_workload.py). Every
certificate is registered ACTIVE. Then ``--revoke`` of them are set REVOKED with UpdateCertificate
by ``--callers`` concurrent API clients while the fleet reports at ``--rate`` reports/s.

Measured in one run:
- per revoked certificate, the time from its UpdateCertificate call's start to its device's
  disconnect (p50/p99/max), and the calls' own latency;
- that exactly the revoked devices are down at the end, each refused on its reconnect attempts
  (the devices retry with backoff, as AWS's SDKs do);
- report -> accepted latency of the fleet with no revocation (baseline) and during it.
Results: ``bench/results/certificates-<database>-<devices>x<revoke>-<date>.json``.

``--certificates registered`` runs serve with ``--mqtt-certificates registered`` (only certificates
registered ACTIVE connect: the broker holds that list too); ``--refused-before`` and
``--active-before`` put that many REVOKED or ACTIVE certificates of other devices in the database
before the service's start, so its start, the lists it gives its broker and the reads of them are
measured at a large registry's size.

    .venv/bin/python bench/certificates.py [--database sqlite|postgresql] [--devices 5000]
                                           [--revoke 1000] [--callers 4] [--rate 500]
                                           [--certificates signed|registered] [--active-before N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from bench.fleet import Fleet, percentile  # noqa: E402
from bench.fleet_workload import configure, report_template  # noqa: E402
from bench.process_usage import rss_bytes  # noqa: E402
from iotdefender.store.database import create_engine, sqlite_url  # noqa: E402
from iotdefender.store.schema import certificates  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, free_port, mosquitto_children  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def _issue(directory: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           san_ip: str | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``name`` (self-signed when ``ca`` is None: the CA), written as NAME.pem/.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca[0].subject if ca else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2)))
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if san_ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                                        critical=False)
    certificate = builder.sign(ca[1] if ca else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return certificate, key


def make_pki(directory: Path, devices: int) -> None:
    ca = _issue(directory, "ca", None)
    _issue(directory, "server", ca, san_ip="127.0.0.1")
    for n in range(devices):
        _issue(directory, f"dev{n}", ca)


def register_all(iot: Any, directory: Path, devices: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every device's certificate registered ACTIVE: {thing: certificate id}."""
    def register(n: int) -> tuple[str, str]:
        pem = (directory / f"dev{n}.pem").read_text()
        return f"dev{n}", iot.register_certificate(certificatePem=pem, status="ACTIVE")["certificateId"]

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(register, range(devices)))


def add_certificates(url: str, count: int, status: str = "REVOKED") -> None:
    """``count`` certificates of devices not in the fleet (random ids) in ``status``, written straight
    into the database: REVOKED, the list every broker holds, as after years of revocations; ACTIVE,
    the list a broker holds under ``--mqtt-certificates registered`` for a large fleet."""
    engine = create_engine(url)
    now = time.time()
    rows = [{"certificate_id": secrets.token_hex(32), "arn": "arn:aws:iot:us-east-1:123456789012:cert/x",
             "pem": "-", "common_name": f"other{n}", "status": status, "certificate_mode": "SNI_ONLY",
             "not_before": now, "not_after": now, "customer_version": 1, "generation_id": "-",
             "creation_date": now, "last_modified_date": now} for n in range(count)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(certificates.insert(), rows[start:start + 5000])
    engine.dispose()


def revoke(make_client: Any, ids: dict[str, str], things: list[str], callers: int) -> dict[str, tuple[float, float]]:
    """UpdateCertificate REVOKED for each thing's certificate, ``callers`` at once: {thing: (start, end)}
    in CLOCK_MONOTONIC (the load generators' clock)."""
    local = threading.local()

    def one(thing: str) -> tuple[str, tuple[float, float]]:
        if not hasattr(local, "iot"):
            local.iot = make_client()
        started = time.monotonic()
        local.iot.update_certificate(certificateId=ids[thing], newStatus="REVOKED")
        return thing, (started, time.monotonic())

    with ThreadPoolExecutor(callers) as pool:
        return dict(pool.map(one, things))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--revoke", type=int, default=1000)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--refused-before", type=int, default=0,
                        help="revoked certificates of other devices already in the database")
    parser.add_argument("--active-before", type=int, default=0,
                        help="ACTIVE certificates of other devices already in the database")
    parser.add_argument("--certificates", choices=("signed", "registered"), default="signed",
                        help="serve's --mqtt-certificates")
    # A refused device retries: AWS IoT's SDKs from 1 s, doubling to 128 s (bench/fleet_worker.py).
    parser.add_argument("--backoff-first", type=float, default=1.0)
    parser.add_argument("--backoff-cap", type=float, default=128.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="iotdefender-bench-certificates-"))
    pki = root / "pki"
    pki.mkdir()
    started = time.monotonic()
    make_pki(pki, args.devices)
    pki_s = time.monotonic() - started
    postgres = PostgresCluster() if args.database == "postgresql" else None
    url = None
    if postgres is not None:
        postgres.start()
        url = postgres.create_database("bench")
    tls_port = free_port()
    service = ServiceProcess(data_dir=root / "service", database_url=url, extra_args=[
        "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port), "--mqtt-ca", str(pki / "ca.pem"),
        "--mqtt-cert", str(pki / "server.pem"), "--mqtt-key", str(pki / "server.key"),
        "--report-min-interval", "0",  # the phases' reports come faster than AWS's 5 minutes
        "--mqtt-certificates", args.certificates])
    service.start()
    fleet = None
    try:
        # Restarted with the list of refused certificates in the database (read whole at start).
        service.stop()
        add_certificates(url or sqlite_url(root / "service"), args.refused_before)
        add_certificates(url or sqlite_url(root / "service"), args.active_before, "ACTIVE")
        started = time.monotonic()
        service.start()
        start_s = time.monotonic() - started
        iot = service.client()
        configure(iot)
        started = time.monotonic()
        ids = register_all(iot, pki, args.devices)
        register_s = time.monotonic() - started
        fleet = Fleet("127.0.0.1", tls_port, args.devices, report_template(), per_process=1000,
                      tls=(str(pki / "ca.pem"), str(pki)), backoff_s=(args.backoff_first, args.backoff_cap))
        connected = fleet.connect(timeout=300)
        mosquitto_rss = sum(rss_bytes(pid) for pid in mosquitto_children(service.process.pid))
        baseline = fleet.open_loop(args.rate, args.load_seconds, 1, drain_s=20)

        revoked = [f"dev{n}" for n in range(0, args.devices, max(1, args.devices // args.revoke))][:args.revoke]
        outcome: dict[str, Any] = {}

        def revoking() -> None:
            time.sleep(1.0)  # inside the load's window
            outcome["calls"] = revoke(service.client, ids, revoked, args.callers)

        thread = threading.Thread(target=revoking)
        thread.start()
        during = fleet.open_loop(args.rate, args.load_seconds, 10**7, drain_s=20)
        thread.join()
        time.sleep(5)  # the revoked devices keep retrying, and are refused
        losses = fleet.losses()
        calls: dict[str, tuple[float, float]] = outcome["calls"]
        to_disconnect = sorted((losses[t][0] - calls[t][0]) * 1000 for t in revoked
                               if t in losses and losses[t][0] is not None)
        call_ms = sorted((end - start) * 1000 for start, end in calls.values())
        result = {
            "benchmark": "certificates", "database": args.database, "devices": args.devices,
            "revoked": len(revoked), "callers": args.callers, "refused_before": args.refused_before,
            "active_before": args.active_before, "certificates": args.certificates,
            "service_start_s": round(start_s, 2), "mosquitto_rss_mb_connected": round(mosquitto_rss / 2**20, 1),
            "pki_s": round(pki_s, 1), "register_s": round(register_s, 1),
            "registrations_per_s": round(args.devices / register_s, 1), "connect": connected,
            "revocation_s": round(max(e for _, e in calls.values()) - min(s for s, _ in calls.values()), 2),
            "update_certificate_ms": {"p50": percentile(call_ms, 0.5), "p99": percentile(call_ms, 0.99),
                                      "max": round(call_ms[-1], 1)},
            "call_start_to_disconnect_ms": {"p50": percentile(to_disconnect, 0.5),
                                            "p99": percentile(to_disconnect, 0.99),
                                            "max": round(to_disconnect[-1], 1) if to_disconnect else None},
            "revoked_down": sum(1 for t in revoked if t in losses),
            "revoked_refused_at_reconnect": sum(1 for t in revoked if t in losses and losses[t][1] > 0),
            "others_down": sorted(set(losses) - set(revoked))[:20],
            "reports": {"baseline": baseline, "during_revocation": during},
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": environment(),
            "date": dt.date.today().isoformat(),
        }
        for phase in result["reports"].values():
            phase.pop("p99_ms_by_second", None)
            # A report in flight on a connection the revocation closed is never answered (AWS IoT
            # does the same); any other unanswered report is a loss.
            unanswered = phase.pop("unanswered_things")
            phase["unanswered_of_revoked_devices"] = len(set(unanswered) & set(revoked))
            phase["unanswered_of_other_devices"] = sorted(set(unanswered) - set(revoked))
        print(json.dumps(result, indent=2))
        RESULTS.mkdir(exist_ok=True)
        listed = f"-list{args.refused_before}" if args.refused_before else ""
        listed += f"-active{args.active_before}" if args.active_before else ""
        listed += "-registered" if args.certificates == "registered" else ""
        if (args.backoff_first, args.backoff_cap) != (1.0, 128.0):
            listed += f"-backoff{args.backoff_first:g}-{args.backoff_cap:g}"
        out = RESULTS / f"certificates-{args.database}-{args.devices}x{len(revoked)}{listed}-{result['date']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")
    finally:
        if fleet is not None:
            fleet.close()
        service.stop()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    main()
