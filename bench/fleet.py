"""The simulated fleet as the benchmark drives it: several load-generator processes, one command at a time.

Devices are split over processes of at most ``per_process`` connections each (far under the
20,000 open-file limit of these machines), and process ``i`` connects from loopback source
address ``127.0.0.(2 + i)``, so the fleet is not capped by the ephemeral ports of one
source/destination pair. Every command goes to all processes at once and their answers are
merged here; a process that does not answer in time fails the run rather than hanging it.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from bench.fleet_worker import WorkerSpec, worker_main


class Fleet:
    def __init__(self, host: str, port: int | Sequence[int], devices: int, payloads: tuple[bytes, bytes],
                 per_process: int = 4000, min_processes: int = 2, tls: tuple[str, str] | None = None,
                 backoff_s: tuple[float, float] | None = None) -> None:
        """``port`` may list several brokers (a cluster's broker nodes): process ``i`` connects to
        ``ports[i % len(ports)]``, so devices and load are spread evenly over them."""
        self.size = devices
        ports = [port] if isinstance(port, int) else list(port)
        count = max(min_processes, len(ports), math.ceil(devices / per_process))
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(count):
            things = [f"dev{n}" for n in range(index, devices, count)]
            spec = WorkerSpec(index=index, things=things, source=f"127.0.0.{2 + index}", host=host,
                              port=ports[index % len(ports)], tls=tls,
                              **({"backoff_s": backoff_s} if backoff_s else {}))
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(child, spec, payloads), daemon=True,
                                      name=f"fleet-{index}")
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    @property
    def processes(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def ask(self, command: str, *args: Any, timeout: float) -> list[dict[str, Any]]:
        """Send one command to every process and collect the answers (bounded by `timeout`)."""
        for pipe in self._pipes:
            pipe.send((command, *args))
        return self._collect(command, timeout)

    def first_id(self, base: int, index: int) -> int:
        """Report ids never collide between processes and phases."""
        return base + index * 100_000_000

    def connect(self, timeout: float) -> dict[str, Any]:
        answers = self.ask("connect", timeout, timeout=timeout + 30)
        started = min(a["started"] for a in answers)
        up = sum(a["up"] for a in answers)
        return {"devices": self.size, "connected": up, "processes": self.processes,
                "connect_s": round(max(a["done"] for a in answers) - started, 2) if up == self.size else None,
                "gave_up_after_s": None if up == self.size else timeout,
                "connect_attempts": sum(a["attempts"] for a in answers),
                "failed_attempts": sum(a["failures"] for a in answers),
                "refused_connacks": sum(a["refused"] for a in answers)}

    def open_loop(self, rate: float, seconds: float, base: int, drain_s: float) -> dict[str, Any]:
        start_at = time.monotonic() + 0.5
        share = rate / self.size
        for index, pipe in enumerate(self._pipes):
            devices = len(range(index, self.size, self.processes))
            pipe.send(("open_loop", share * devices, seconds, start_at, self.first_id(base, index), drain_s))
        answers = self._collect("open_loop", seconds + drain_s + 30)
        by_second: dict[int, list[float]] = {}
        for a in answers:
            for sent_at, latency in zip(a["sent_at"], a["latencies_ms"]):
                by_second.setdefault(int(sent_at - start_at), []).append(latency)
        tally = _tally(answers)
        last = max((a["last_answer"] for a in answers if a["last_answer"]), default=None)
        return {"offered_per_s": rate, "seconds": seconds, **tally,
                "unanswered_things": sorted(t for a in answers for t in a["unanswered_things"]),
                "answered_per_s": round(tally["answered"] / (last - start_at), 1) if last else 0.0,
                # A stall shows as one bad second; steady queueing as every second high.
                "p99_ms_by_second": [percentile(sorted(by_second[s]), 0.99) for s in sorted(by_second)]}

    def bursts(self, period: float, rounds: int, base: int, drain_s: float,
               start_at: float | None = None) -> dict[str, Any]:
        """Every device reports at the same instant, every ``period`` seconds, ``rounds`` times
        (fleet_worker.LocalFleet.bursts), from ``start_at`` (CLOCK_MONOTONIC; default in 0.5 s):
        report -> answer latency of all of them."""
        start_at = time.monotonic() + 0.5 if start_at is None else start_at
        for index, pipe in enumerate(self._pipes):
            pipe.send(("bursts", period, rounds, start_at, self.first_id(base, index), drain_s))
        return {"period_s": period, "rounds": rounds, **_tally(self._collect("bursts", period * rounds + drain_s + 30))}

    def closed_loop(self, seconds: float, base: int) -> dict[str, Any]:
        start_at = time.monotonic() + 0.5
        for index, pipe in enumerate(self._pipes):
            pipe.send(("closed_loop", seconds, start_at, self.first_id(base, index)))
        answers = self._collect("closed_loop", seconds + 30)
        answered = sum(a["answered_in_window"] for a in answers)
        return {"seconds": seconds, "in_flight_per_device": 1, "answered": answered,
                "answered_per_s": round(answered / seconds, 1)}

    def _collect(self, command: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        answers = []
        for pipe, process in zip(self._pipes, self._processes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load generator {process.name} did not answer {command!r} in {timeout:.0f} s")
            answers.append(pipe.recv())
        return answers

    def losses(self) -> dict[str, tuple[float | None, int]]:
        """{thing: (when its subscribed connection was lost, CLOCK_MONOTONIC; its refused CONNACKs)}
        of the devices down now."""
        merged: dict[str, tuple[float | None, int]] = {}
        for answer in self.ask("losses", timeout=30):
            merged.update(answer)
        return merged

    def arm_storm(self) -> None:
        self.ask("arm_storm", timeout=10)

    def wait_storm(self, restarted_at: float, up_at: float, timeout: float) -> dict[str, Any]:
        answers = self.ask("wait_storm", timeout, timeout=timeout + 30)
        resubscribed = sum(a["resubscribed"] for a in answers)
        done = [a["done"] for a in answers]
        complete = all(d is not None for d in done)
        return {"devices": self.size, "dropped": sum(a["dropped"] for a in answers), "resubscribed": resubscribed,
                "all_back_after_restart_s": round(max(done) - restarted_at, 2) if complete else None,
                "all_back_after_service_up_s": round(max(done) - up_at, 2) if complete else None,
                "restart_took_s": round(up_at - restarted_at, 2),
                "connect_attempts": sum(a["attempts"] for a in answers),
                "refused_connacks": sum(a["refused"] for a in answers),
                "gave_up_after_s": None if complete else timeout}

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def _tally(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The load generators' answers to a phase of reports, merged: counts and latency percentiles."""
    latencies = sorted(x for a in answers for x in a["latencies_ms"])
    sent = sum(a["sent"] for a in answers)
    answered = sum(a["answered"] for a in answers)
    return {"sent": sent, "not_sent_device_down": sum(a["skipped"] for a in answers), "answered": answered,
            "rejected": sum(a["rejected"] for a in answers), "lost": sent - answered,
            "p50_ms": percentile(latencies, 0.50), "p90_ms": percentile(latencies, 0.90),
            "p99_ms": percentile(latencies, 0.99), "max_ms": round(latencies[-1], 1) if latencies else None}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    return round(values[min(len(values) - 1, int(len(values) * q))], 1) if values else None
