"""A bound on the size of a request head (request line + header fields) for uvicorn's httptools server.

Neither llhttp nor httptools nor uvicorn limit it (uvicorn's ``h11_max_incomplete_event_size``
applies to its h11 server only): httptools concatenates a header value until its line ends, so
one 64 MB header was read whole and answered. Common servers refuse heads beyond 8-16 KB
(Node.js 16 KB, nginx 4 x 8 KB buffers); AWS endpoints answer 431/400. We answer
``431 Request Header Fields Too Large`` and close the connection.

The cost is one integer addition per received chunk while a head is being read, and one sum over
the header list per request: nothing measurable next to a request (see docs/api-hardening.md).
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 16 * 1024


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0  # bytes received for the awaited head; None inside a body
        self._head_too_large = False

    def data_received(self, data: bytes) -> None:
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
        body = orjson.dumps({"message": f"Request header fields too large: the request line and headers "
                                        f"must not exceed {self.max_head_bytes} bytes"})
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"x-amzn-ErrorType: RequestHeaderFieldsTooLarge\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()

