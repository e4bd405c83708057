"""What a start of ``iotdefender serve`` imports: not the clients it never uses at start.

Every command line builds the whole parser (``backtest``'s arguments included) and the service
imports every role's code; the backtest command's HTTP client (httpx, a botocore session with
its client machinery and docs) and the alert deliverer's httpx are imported only when used. A
start imports about 950 modules; these were ~80 more of them (measured in bench/README.md,
"Starting the service").
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import contextlib, io, sys
from iotdefender.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["serve", "--help"])  # the whole parser, every command's arguments
import iotdefender.service, iotdefender.pipeline.worker_standby
from iotdefender.contract.service_model import service_model
assert len(service_model().operation_names) > 200
print(" ".join(sorted(m for m in ("httpx", "botocore.session", "botocore.client", "botocore.docs")
                      if m in sys.modules)))
"""


def test_a_start_imports_no_http_client_and_no_botocore_session() -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert probe.stdout.strip() == "", probe.stdout
