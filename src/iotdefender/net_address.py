"""Network endpoints as devices and brokers write them: ``ip:port``, ``[v6]:port`` or a bare address.

One parser for every place an address enters the service (a report's ``remote_addr``, the
broker-event intake's ``ip``), so they accept and refuse exactly the same texts; a port outside
0-65535 is refused instead of being dropped silently with the rest of the text.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

MAX_PORT = 65535


def _port(text: str) -> None:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {text!r} is not a number")
    if int(text) > MAX_PORT:
        raise ValueError(f"port {text} is out of range 0-{MAX_PORT}")


def ip_of_endpoint(endpoint: str) -> str:
    """The IP address of an endpoint, in canonical form; ValueError naming what is wrong otherwise."""
    text = endpoint.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{endpoint!r} is not [IPv6]:port")
        if rest:
            _port(rest[1:])
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        _port(port)
    else:
        host = text
        try:
            ipaddress.ip_address(host)
        except ValueError:  # an IPv6 address without brackets, followed by a port
            host, _, port = text.rpartition(":")
            if not host:
                raise ValueError(f"{endpoint!r} is not an IP address") from None
            _port(port)
    return str(ipaddress.ip_address(host))


def check_port_free(host: str, port: int) -> None:
    """Raise OSError with one clear line when another process holds the port (before a server fails
    on it with a traceback of its own, or, for Mosquitto, an exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} on {host} is already in use") from None
            raise
