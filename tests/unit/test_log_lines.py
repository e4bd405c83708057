"""Log lines stay whole when several processes share one stderr (the service, its detection worker
and the broker plugin do): a line longer than the stream's buffer was written in two system calls,
and another process's line could land between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
sys.path.insert(0, {src!r})
import structlog
from iotdefender.logging_setup import configure_logging
configure_logging("json")
log = structlog.get_logger()
for i in range(150):
    log.info("long_line", n=i, payload="x" * 20000)
"""


def test_long_lines_of_processes_sharing_stderr_stay_whole(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(src=src))
    out = tmp_path / "shared.log"
    with out.open("a") as shared:
        writers = [subprocess.Popen([sys.executable, str(script)], stderr=shared) for _ in range(3)]
        for writer in writers:
            assert writer.wait(60) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 450
    assert sorted(json.loads(line)["n"] for line in lines) == sorted(list(range(150)) * 3)
