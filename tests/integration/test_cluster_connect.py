"""A node's first connection to NATS, refused with a reason an operator can act on: a server too
old for cluster mode (Debian's 2.9, which took the stream without its metadata and left the next
node refused for a partition count of None), a login the server refused (it said "no server
answered"), and never the password of ``--cluster-url`` in the message."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from iotdefender.cluster_serve import connect
from iotdefender.service import ConfigurationError
from tests.support.jetstream import nats_server_binary
from tests.support.processes import free_port, wait_for
from tests.support import plain_http

DEBIAN_NATS_SERVER = "/usr/sbin/nats-server"  # `make system-deps` installs it (the NATS events tests use it)


def served(binary: str, tmp_path: Path, *options: str) -> Iterator[str]:
    port, http_port = free_port(), free_port()
    process = subprocess.Popen([binary, "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port),
                                "-m", str(http_port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return plain_http.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            except httpx.TransportError:  # not listening yet
                return False
        wait_for(up, 20, "nats-server")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def old_server(tmp_path: Path) -> Iterator[str]:
    version = subprocess.run([DEBIAN_NATS_SERVER, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v(\d+)\.(\d+)", version)
    assert found and (int(found[1]), int(found[2])) < (2, 11), f"Debian's nats-server is not older than 2.11: {version}"
    yield from served(DEBIAN_NATS_SERVER, tmp_path)


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[str]:
    yield from served(nats_server_binary(), tmp_path, "--user", "nu", "--pass", "right-pw")


def refusal(urls: list[str], first_connect_s: float = 10.0, within_s: float | None = None) -> str:
    """The ConfigurationError's message; with ``within_s``, it must come that soon (else TimeoutError)."""
    with pytest.raises(ConfigurationError) as refused:
        asyncio.run(asyncio.wait_for(connect(urls, "node-t", lambda: None, first_connect_s), within_s))
    return str(refused.value)


def test_a_server_older_than_2_11_is_refused_at_the_first_connection(old_server: str):
    message = refusal([f"nats://{old_server}"])
    assert "is too old: cluster mode needs 2.11 or later" in message and "nats-server 2." in message, message


def test_a_refused_login_says_so_and_never_shows_the_password(guarded_server: str):
    message = refusal([f"nats://nu:wrong-pw@{guarded_server}"], first_connect_s=4)
    assert "refused the connection" in message and "Authorization Violation" in message, message
    assert "wrong-pw" not in message and "nu:***@" in message, message
    nowhere = refusal([f"nats://nu:wrong-pw@127.0.0.1:{free_port()}"], first_connect_s=2)
    assert "no server answered" in nowhere and "wrong-pw" not in nowhere and "nu:***@" in nowhere, nowhere
    asyncio.run(_connects(f"nats://nu:right-pw@{guarded_server}"))


def test_a_refused_login_exits_without_waiting_out_the_first_connection_budget(guarded_server: str):
    """A refusal is final (retrying with the same password is refused again): the node used to wait
    its whole first-connection budget (10 s) before saying so. Two URLs, both refusing: the answer
    comes once each has refused, well inside a budget of 60 s."""
    urls = [f"nats://nu:wrong-pw@{guarded_server}", f"nats://nu:wrong-pw@{guarded_server}"]
    message = refusal(urls, first_connect_s=60, within_s=20)
    assert "refused the connection" in message and "Authorization Violation" in message, message


async def _connects(url: str) -> None:
    nc = await connect([url], "node-t", lambda: None)
    await nc.close()
