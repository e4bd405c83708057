"""Bounds on reading a request for uvicorn's httptools server: the size of its head (request line +
header fields), and the time to receive it whole.

Neither llhttp nor httptools nor uvicorn limit it (uvicorn's ``h11_max_incomplete_event_size``
applies to its h11 server only): httptools concatenates a header value until its line ends, so
one 64 MB header was read whole and answered. Common servers refuse heads beyond 8-16 KB
(Node.js 16 KB, nginx 4 x 8 KB buffers); AWS endpoints answer 431/400. We answer
``431 Request Header Fields Too Large`` and close the connection.

The cost is one integer addition per received chunk while a head is being read, and one sum over
the header list per request: nothing measurable next to a request (see docs/api-hardening.md).

Nor does uvicorn bound the time a request takes to arrive: a connection that sends nothing, a head
a byte at a time, or a head whose declared body never comes was held open for as long as the
client liked (over 150 s in an outside-in test; each holds a file of the process's 20,000). A
request must arrive whole within ``read_timeout_s`` (``--api-read-timeout``, 60 s: nginx's default
``client_header_timeout`` and ``client_body_timeout``, which count the gaps between reads, reset
by a trickle; here the whole request counts) of its first byte, or of the connection's
opening or its last answer: else ``408 Request Timeout`` (nothing, for a connection that sent
nothing) and the connection is closed. A timer per request, armed and cancelled with it.
"""

from __future__ import annotations

from asyncio import TimerHandle
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 16 * 1024
REQUEST_READ_TIMEOUT_S = 60.0


class RequestHeadTooLarge(Exception):
    """Raised from the parser callback; httptools wraps it in HttpParserCallbackError."""


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a request head as sent, less the method and version: URL, names, values, separators."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses request heads above ``max_head_bytes``.

    Two checks: while a head is incomplete, the bytes received for it (so a client cannot make us
    buffer an endless header line); once complete, its exact size (so a head that arrived in one
    large read is held to the same limit).
    """

    max_head_bytes = MAX_REQUEST_HEAD_BYTES
    read_timeout_s = REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0  # bytes received for the awaited head; None inside a body
        self._head_too_large = False
        self._read_deadline: TimerHandle | None = None
        self._request_bytes = 0  # bytes received of the awaited request (0: none yet)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        if self._read_deadline is None:  # a request pipelined behind one being answered
            self._arm_read_deadline()
            self._request_bytes = 1  # its first bytes are in
        super().on_message_begin()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._read_deadline is None:
            self._arm_read_deadline()

    def _arm_read_deadline(self) -> None:
        self._request_bytes = 0
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and self.cycle.response_started
        if self._request_bytes and not answering:
            self._answer_and_close(408, "RequestTimeoutException",
                                   f"The request did not arrive whole within {self.read_timeout_s:g} s")
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._request_bytes += len(data)
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes is not None and self._head_bytes > self.max_head_bytes and not self._head_too_large:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        if head_size(self.url, self.headers) > self.max_head_bytes:
            self._head_too_large = True
            raise RequestHeadTooLarge()
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self._cancel_read_deadline()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with 400; ours (raised above) deserves its own status.
        if self._head_too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._head_too_large = True
        if self.transport.is_closing():
            return
        self._answer_and_close(431, "RequestHeaderFieldsTooLarge", "Request header fields too large: the request "
                               f"line and headers must not exceed {self.max_head_bytes} bytes")

    def _answer_and_close(self, status: int, error_type: str, message: str) -> None:
        """An AWS-shaped error written outside any request cycle, then the connection closed."""
        body = orjson.dumps({"message": message})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"x-amzn-ErrorType: " + error_type.encode("ascii") + b"\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


def bounded_protocol(read_timeout_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with ``read_timeout_s`` (uvicorn builds it from the class)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"read_timeout_s": read_timeout_s})
