"""Counting the connections an engine tries to open (a database outage's cost is one per try)."""

from __future__ import annotations

import pytest

from iotdefender.store import database as database_module


def counted(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """A list that grows by one with each connection attempt of any engine from now on.

    Each attempt goes through the engine's own ``do_connect`` listener, which ends the listeners'
    chain (it returns the connection): counted where it makes the connection."""
    attempts: list[object] = []
    bounded_class = database_module._bounded_class
    monkeypatch.setattr(database_module, "_bounded_class",
                        lambda bound: attempts.append(bound) or bounded_class(bound))
    return attempts
