"""Persistent MQTT sessions at fleet size: what Mosquitto's persistence costs the default broker.

N devices (default 15,000) connect with clean session off, each subscribed at QoS 1 to its own
``$aws/things/<thing>/defender/metrics/json/+``, and stay connected; the service is stopped with
SIGTERM (Mosquitto saves every session before it exits) and started again on the same data
directory (Mosquitto restores them), and every device connects once more, without subscribing.
Measured: the stop, mosquitto.db's size, the start until /healthz and the MQTT listener answer,
Mosquitto's RSS, and how many CONNACKs say the session is present. The same stop and start with no
sessions saved are the baseline. And what an autosave (every 60 s) costs the devices: Mosquitto
writes mosquitto.db in its one thread, so the longest PINGREQ -> PINGRESP of one more client around
a save (forced with SIGUSR1, the signal Mosquitto saves on) against the same without a save. The
service's start is mostly Python's; Mosquitto's own share is timed apart, on a bare Mosquitto started
on a copy of the saved mosquitto.db and on none (time to listen, SIGTERM to exit; median of 5).

    .venv/bin/python bench/persistent_sessions.py [--devices 15000]

Results: bench/results/persistent-sessions-<devices>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import mqtt_wire  # noqa: E402
from bench.common import environment  # noqa: E402
from bench.process_usage import rss_bytes  # noqa: E402
from tests.support.processes import ServiceProcess, free_port, mosquitto_children, wait_for  # noqa: E402

RESULTS = Path(__file__).with_name("results")
SOURCES = 4  # loopback source addresses 127.0.0.2..: one pair's ephemeral ports do not cap the fleet


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def timed_start(service: ServiceProcess) -> float:
    started = time.monotonic()
    service.start()
    wait_for(lambda: listening(service.mqtt_port), 60, "the MQTT listener")
    return time.monotonic() - started


def timed_stop(service: ServiceProcess) -> float:
    started = time.monotonic()
    service.stop()
    return time.monotonic() - started


async def _packet(reader: asyncio.StreamReader, parser: mqtt_wire.Reader) -> mqtt_wire.Packet:
    while True:
        for packet in parser.feed(b""):
            return packet
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("closed by the broker")
        for packet in parser.feed(data):
            return packet


async def _device(index: int, port: int, subscribe: bool, gate: asyncio.Semaphore,
                  kept: list[asyncio.StreamWriter]) -> bool:
    """CONNECT with clean session off (and SUBSCRIBE): whether the CONNACK said the session was present."""
    thing = f"dev{index}"
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(f"127.0.0.{2 + index % SOURCES}", 0))
        parser = mqtt_wire.Reader()
        writer.write(mqtt_wire.connect(thing, 600, clean_session=False))
        connack = await _packet(reader, parser)
        assert connack.kind == mqtt_wire.CONNACK and connack.body[1] == 0, connack.body
        if subscribe:
            writer.write(mqtt_wire.subscribe(1, f"$aws/things/{thing}/defender/metrics/json/+"))
            suback = await _packet(reader, parser)
            assert suback.kind == mqtt_wire.SUBACK and suback.body[-1] == 1, suback.body
        kept.append(writer)
        return bool(connack.body[0] & 1)


async def connect_fleet(devices: int, port: int, subscribe: bool) -> tuple[float, int, list[asyncio.StreamWriter]]:
    gate = asyncio.Semaphore(500)
    kept: list[asyncio.StreamWriter] = []
    started = time.monotonic()
    present = await asyncio.gather(*(_device(i, port, subscribe, gate, kept) for i in range(devices)))
    return time.monotonic() - started, sum(present), kept


async def close_fleet(writers: list[asyncio.StreamWriter], send_disconnect: bool) -> None:
    for writer in writers:
        if send_disconnect and not writer.is_closing():
            writer.write(mqtt_wire.disconnect())
        writer.close()
    await asyncio.sleep(0.5)


async def longest_ping_ms(port: int, save_pid: int | None, seconds: float = 2.0) -> float:
    """The longest PINGREQ round trip over ``seconds``; SIGUSR1 to ``save_pid`` a quarter in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = mqtt_wire.Reader()
    writer.write(mqtt_wire.connect(f"probe-{time.monotonic_ns()}", 60))
    await _packet(reader, parser)
    longest, started, signalled = 0.0, time.monotonic(), False
    while time.monotonic() - started < seconds:
        if save_pid is not None and not signalled and time.monotonic() - started > seconds / 4:
            os.kill(save_pid, signal.SIGUSR1)
            signalled = True
        sent = time.monotonic()
        writer.write(b"\xc0\x00")  # PINGREQ
        assert (await _packet(reader, parser)).kind == mqtt_wire.PINGRESP
        longest = max(longest, time.monotonic() - sent)
    writer.write(mqtt_wire.disconnect())
    writer.close()
    return round(longest * 1000, 1)


def broker_pid(service: ServiceProcess) -> int:
    assert service.process is not None
    (broker,) = mosquitto_children(service.process.pid)
    return broker


def broker_rss_mb(service: ServiceProcess) -> float:
    return round(rss_bytes(broker_pid(service)) / 2**20, 1)


def bare_broker(database: Path | None, port: int, runs: int = 5) -> dict[str, float]:
    """A Mosquitto without the plugin on a copy of ``database`` (or on none): median time until it
    listens, and from SIGTERM (it saves) to its exit."""
    listen, exit_ = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as directory:
            if database is not None:
                shutil.copy(database, Path(directory) / "mosquitto.db")
            config = Path(directory) / "mosquitto.conf"
            config.write_text(("user root\n" if os.geteuid() == 0 else "") + f"persistence true\n"
                              f"persistence_location {directory}/\nlog_type error\nlistener {port} 127.0.0.1\n")
            started = time.monotonic()
            broker = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                while not listening(port):  # polled every 2 ms: wait_for's 50 ms would hide the restore
                    if time.monotonic() - started > 30 or broker.poll() is not None:
                        raise RuntimeError("the bare Mosquitto did not listen")
                    time.sleep(0.002)
                listen.append(time.monotonic() - started)
                stopping = time.monotonic()
                broker.terminate()
                broker.wait(30)
                exit_.append(time.monotonic() - stopping)
            finally:
                if broker.poll() is None:
                    broker.kill()
                    broker.wait()
    return {"listen_ms": round(statistics.median(listen) * 1000, 1), "exit_ms": round(statistics.median(exit_) * 1000, 1)}


async def measure(service: ServiceProcess, devices: int) -> dict[str, Any]:
    """The phases of the module's docstring; the service's blocking start and stop in a thread, so that
    the devices' connections stay served meanwhile."""
    database = service.data_dir / "mosquitto" / "mosquitto.db"
    figures: dict[str, Any] = {"devices": devices}
    figures["start_empty_s"] = round(await asyncio.to_thread(timed_start, service), 2)
    figures["broker_rss_empty_mb"] = broker_rss_mb(service)
    figures["stop_empty_s"] = round(await asyncio.to_thread(timed_stop, service), 2)
    figures["db_empty_bytes"] = database.stat().st_size
    await asyncio.to_thread(timed_start, service)
    took, present, writers = await connect_fleet(devices, service.mqtt_port, subscribe=True)
    figures["connect_and_subscribe_s"] = round(took, 1)
    figures["session_present_on_first_connect"] = present
    figures["broker_rss_connected_mb"] = broker_rss_mb(service)
    figures["stop_with_sessions_s"] = round(await asyncio.to_thread(timed_stop, service), 2)  # devices connected
    await close_fleet(writers, send_disconnect=False)
    figures["db_with_sessions_bytes"] = database.stat().st_size
    figures["start_with_sessions_s"] = round(await asyncio.to_thread(timed_start, service), 2)
    figures["broker_rss_restored_mb"] = broker_rss_mb(service)
    figures["longest_ping_no_save_ms"] = await longest_ping_ms(service.mqtt_port, None)
    figures["longest_ping_around_a_save_ms"] = await longest_ping_ms(service.mqtt_port, broker_pid(service))
    took, present, writers = await connect_fleet(devices, service.mqtt_port, subscribe=False)
    figures["reconnect_s"] = round(took, 1)
    figures["session_present_on_reconnect"] = present
    await close_fleet(writers, send_disconnect=True)
    saved = service.data_dir / "saved.db"
    shutil.copy(database, saved)  # the fleet's sessions, as the last stop wrote them
    figures["bare_mosquitto_no_db"] = await asyncio.to_thread(bare_broker, None, free_port())
    figures["bare_mosquitto_with_the_db"] = await asyncio.to_thread(bare_broker, saved, free_port())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=15_000)
    args = parser.parse_args()
    service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-sessions-")),
                             extra_args=["--mqtt-acl", "own"])
    try:
        figures = asyncio.run(measure(service, args.devices))
    finally:
        service.stop()
        shutil.rmtree(service.data_dir, ignore_errors=True)
    result = {"benchmark": "persistent_sessions", "environment": environment(), "figures": figures}
    print(json.dumps(figures))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"persistent-sessions-{args.devices}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
