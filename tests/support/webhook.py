"""A real HTTP receiver for alert webhooks, recording what arrives and checking its signature."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import queue
import threading
import time
from typing import Any

from tests.support.processes import free_port


class WebhookReceiver:
    def __init__(self, secret: str, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.secret = secret
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.arrived: queue.Queue[float] = queue.Queue()  # when each request came in, before its delay
        self.fail_remaining = fail_first
        self.port = free_port()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrived.put(time.monotonic())
                time.sleep(delay_s)  # a slow destination
                if receiver.fail_remaining > 0:
                    receiver.fail_remaining -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                timestamp = self.headers.get("X-Iotdefender-Timestamp", "")
                expected = "sha256=" + hmac.new(receiver.secret.encode(), timestamp.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                given = self.headers.get("X-Iotdefender-Signature", "")
                receiver.received.put({"signature_ok": hmac.compare_digest(expected, given),
                                       "message": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def next(self, timeout: float = 15) -> dict[str, Any]:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
