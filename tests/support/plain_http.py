"""httpx's one-call functions (``httpx.get`` and the rest) without their TLS setup at every call.

Each ``httpx.get()`` builds a client, and with it an SSL context that loads certifi's CA bundle,
even for a plain ``http://`` URL: ~48 ms of CPU a call on this machine, against ~0.8 ms with the
context built once. The suite polls ``/healthz``, ``/metrics`` and the like every 0.05 s while a
service starts or a cluster settles, so those calls alone kept the test process busy on one of two
cores while the service it waited for needed it. These are the same calls (a new client, a new
connection, no cookies kept), with one SSL context shared by all of them; a caller that needs its
own ``verify`` passes it.
"""

from __future__ import annotations

from typing import Any

import httpx

TLS = httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("verify", TLS)
    return httpx.request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)
