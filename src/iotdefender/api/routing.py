"""Map an HTTP method and raw path to a model operation and its URI parameters.

The route table is compiled from every operation's ``http.requestUri`` in the service model:
``{label}`` matches one path segment, ``{label+}`` (greedy) the rest of the path. Literal routes
win over parameterised ones (``/thing-groups/addThingToThingGroup`` before
``/thing-groups/{thingGroupName}``), as in AWS's own routers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from botocore.model import OperationModel, ServiceModel

_LABEL = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    operation: OperationModel
    literal_length: int
    fixed_query: tuple[str, ...]


@dataclass(frozen=True)
class RouteMatch:
    operation: OperationModel
    path_params: dict[str, str]


class RouteNotFound(Exception):
    """No operation has this path (or none has it with this method)."""


def _compile(uri: str) -> tuple[re.Pattern[str], int, tuple[str, ...]]:
    path, _, query = uri.partition("?")
    regex, literal, pos = "", 0, 0
    for m in _LABEL.finditer(path):
        chunk = path[pos : m.start()]
        regex += re.escape(chunk)
        literal += len(chunk)
        regex += f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    regex += re.escape(path[pos:])
    literal += len(path) - pos
    fixed = tuple(q for q in query.split("&") if q)
    return re.compile(regex + r"/?\Z"), literal, fixed


class Router:
    """Routes requests to operations of a service model."""

    def __init__(self, model: ServiceModel) -> None:
        routes = []
        for name in model.operation_names:
            op = model.operation_model(name)
            pattern, literal, fixed = _compile(op.http["requestUri"])
            routes.append(Route(op.http["method"].upper(), pattern, op, literal, fixed))
        # Most literal first; routes that need fixed query keys before those that do not.
        routes.sort(key=lambda r: (-r.literal_length, -len(r.fixed_query)))
        self._routes = routes

    def match(self, method: str, raw_path: str, query_keys: set[str]) -> RouteMatch:
        """Find the operation for a request; path parameters are percent-decoded."""
        path_matched = False
        for route in self._routes:
            m = route.pattern.match(raw_path)
            if m is None or not all(k.split("=")[0] in query_keys for k in route.fixed_query):
                continue
            path_matched = True
            if route.method != method:
                continue
            params = {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}
            return RouteMatch(route.operation, params)
        raise RouteNotFound("method not allowed" if path_matched else "unknown path")
