"""Who may scrape ``/metrics``: anyone (the default), or who presents the bearer token.

Prometheus's own practice is an unauthenticated ``/metrics`` reachable only from the monitoring
network; the series here are never labelled by thing, but they do tell report rates, rejections by
reason, alert failures and the node's roles to whoever reaches the API port. When that port faces
devices or the internet, ``--metrics-token-file`` asks for ``Authorization: Bearer <token>``, which
Prometheus sends from a scrape config's ``authorization: {credentials_file: ...}``. The token comes
from a file so it is not in the process list; ``/healthz`` stays open for load-balancer probes.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.requests import Request

MIN_TOKEN_CHARS = 16  # a guessable token is no protection


def load_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); ValueError when unusable."""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"the token in {path} must be one word of at least {MIN_TOKEN_CHARS} characters")
    return token


def allowed(request: Request, token: str | None) -> bool:
    """True when no token is required, or the request's bearer token is it (compared in constant
    time, so timing does not reveal how much of a guess was right)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
