"""What a simulated device reports, and how scripted anomalies change it (pure, time passed in).

A normal device listens on a few ports, keeps a handful of TLS connections to its backend
network, moves some kilobytes per report and reports CPU, temperature and firmware as custom
metrics, with noise, as the AWS agents' reports look (reference §4.6).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

ANOMALIES = {
    "new-port": "starts listening on TCP port 4444",
    "unknown-network": "opens a connection to 203.0.113.66, outside the backend network",
    "traffic-burst": "sends 100 times its usual bytes",
    "auth-storm": "publishes to topics it is not allowed to (authorization failures)",
    "reconnect-loop": "disconnects and reconnects in a loop",
    "message-flood": "publishes hundreds of telemetry messages",
}
BACKEND = "10.20.0."
NORMAL_TCP = (22, 443, 8883)
NORMAL_UDP = (53, 123)

SHORT = {"header": "hed", "report_id": "rid", "version": "v", "metrics": "met", "listening_tcp_ports": "tp",
         "listening_udp_ports": "up", "ports": "pts", "port": "pt", "interface": "if", "total": "t",
         "network_stats": "ns", "bytes_in": "bi", "bytes_out": "bo", "packets_in": "pi", "packets_out": "po",
         "tcp_connections": "tc", "established_connections": "ec", "connections": "cs", "remote_addr": "rad",
         "local_port": "lp", "local_interface": "li", "custom_metrics": "cmet"}


@dataclass(frozen=True)
class Anomaly:
    kind: str
    thing: str
    start: float  # seconds after the simulation starts
    stop: float

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.stop


def parse_anomaly(text: str, start: float, stop: float) -> Anomaly:
    """``kind:thing`` as given on the command line."""
    kind, sep, thing = text.partition(":")
    if not sep or kind not in ANOMALIES or not thing:
        raise ValueError(f"--anomaly {text!r}: expected KIND:THING with KIND one of {', '.join(ANOMALIES)}")
    return Anomaly(kind, thing, start, stop)


@dataclass
class SimulatedDevice:
    thing: str
    seed: int
    custom_metrics: bool = True
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def report(self, report_id: int, anomalies: set[str]) -> dict[str, Any]:
        rng = self.rng
        tcp = list(NORMAL_TCP) + (([4444]) if "new-port" in anomalies else [])
        remotes = [f"{BACKEND}{rng.randint(1, 20)}:8883" for _ in range(rng.randint(2, 5))]
        if "unknown-network" in anomalies:
            remotes.append("203.0.113.66:4444")
        bytes_out = int(rng.gauss(40_000, 5_000)) * (100 if "traffic-burst" in anomalies else 1)
        document: dict[str, Any] = {
            "header": {"report_id": report_id, "version": "1.0"},
            "metrics": {
                "listening_tcp_ports": {"ports": [{"interface": "eth0", "port": p} for p in tcp], "total": len(tcp)},
                "listening_udp_ports": {"ports": [{"interface": "eth0", "port": p} for p in NORMAL_UDP],
                                        "total": len(NORMAL_UDP)},
                "network_stats": {"bytes_in": max(0, int(rng.gauss(60_000, 8_000))), "bytes_out": max(0, bytes_out),
                                  "packets_in": rng.randint(300, 500), "packets_out": rng.randint(200, 400)},
                "tcp_connections": {"established_connections": {
                    "connections": [{"local_interface": "eth0", "local_port": 40000 + i, "remote_addr": r}
                                    for i, r in enumerate(remotes)], "total": len(remotes)}},
            },
        }
        if self.custom_metrics:
            document["custom_metrics"] = {
                "cpu_usage": [{"number": round(min(100.0, max(0.0, rng.gauss(35, 8))), 1)}],
                "temperature": [{"number": round(rng.gauss(48, 3), 1)}],
                "firmware": [{"string_list": ["2.4.1"]}],
            }
        return document


def shorten(document: Any) -> Any:
    """The same report with AWS's short key names (custom-metric keys have none)."""
    if isinstance(document, dict):
        return {SHORT.get(k, k): (v if k == "custom_metrics" else shorten(v)) for k, v in document.items()}
    if isinstance(document, list):
        return [shorten(v) for v in document]
    return document
