"""A cluster node's identity: unique per process, readable in logs, valid as a NATS subject token
and a key-value key (letters, digits, ``-``; no ``.``, which separates subject tokens)."""

from __future__ import annotations

import os
import re
import secrets
import socket


def new_node_id(host: str | None = None, pid: int | None = None) -> str:
    """``<host>-<pid>-<random>``: a restarted process is a new member (its predecessor's leases
    expire rather than being mistaken for its own), and two processes on one host differ."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", host if host is not None else socket.gethostname()).strip("-") or "node"
    return f"{name[:40]}-{pid if pid is not None else os.getpid()}-{secrets.token_hex(3)}"
