"""``/metrics`` behind a bearer token when ``--metrics-token-file`` is given (open otherwise, as
every other test and the bench scrape it)."""

from __future__ import annotations

import subprocess
import sys


from tests.support.processes import ServiceProcess
from tests.support import plain_http

TOKEN = "scrape-9f1c2e7d4b6a8350"


def test_metrics_ask_for_the_token_and_healthz_stays_open(tmp_path):
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=["--metrics-token-file", str(token_file)])
    svc.start()
    try:
        anonymous = plain_http.get(svc.endpoint + "/metrics")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
        assert "iotdefender_" not in anonymous.text
        for wrong in ("Bearer " + TOKEN[:-1], "Bearer " + TOKEN + "x", "Basic " + TOKEN, TOKEN):
            assert plain_http.get(svc.endpoint + "/metrics", headers={"Authorization": wrong}).status_code == 401, wrong
        scraped = plain_http.get(svc.endpoint + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200 and "iotdefender_reports_total" in scraped.text
        assert plain_http.get(svc.endpoint + "/healthz").status_code == 200  # probes need no token
    finally:
        svc.stop()


def test_a_token_file_that_gives_no_usable_token_refuses_to_start(tmp_path):
    short = tmp_path / "short.token"
    short.write_text("secret\n")
    svc = ServiceProcess(data_dir=tmp_path / "data")
    for path, says in ((short, "at least 16 characters"), (tmp_path / "missing.token", "No such file")):
        refused = subprocess.run(
            [sys.executable, "-m", "iotdefender", "serve", "--api-port", str(svc.port), "--mqtt-port",
             str(svc.mqtt_port), "--data-dir", str(svc.data_dir), "--metrics-token-file", str(path)],
            capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "--metrics-token-file" in refused.stderr and says in refused.stderr, \
            refused.stderr[-2000:]
