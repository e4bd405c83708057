"""The log format follows where the lines go unless it is given."""

from __future__ import annotations

import io
import os
import pty

from iotdefender.logging_setup import resolved_format


def test_auto_is_readable_on_a_terminal_and_json_elsewhere():
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert resolved_format("auto", terminal) == "console"
    finally:
        os.close(leader)
        os.close(follower)
    assert resolved_format("auto", io.StringIO()) == "json"
    assert resolved_format("json", io.StringIO()) == "json" and resolved_format("console", io.StringIO()) == "console"
