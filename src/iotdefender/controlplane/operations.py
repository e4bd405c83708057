"""How a handler module declares the model operations it implements.

Handlers take the validated input (botocore member names) and return the output members; the
API layer does all wire work, so a handler reads like the AWS documentation of its operation.
Each handler module keeps its own ``OperationTable`` (``operation = OperationTable()``) and
decorates its functions with it; ``controlplane.registry`` gathers the tables. This module imports
no handler module, and no handler module imports the registry, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Params = dict[str, Any]
# (context, validated input, console-only keywords such as behavior_name) -> output members
Handler = Callable[..., Params]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Implementation:
    """A model operation's handler, and whether it checks the model's max/pattern/enum itself.

    ``checks_constraints`` is for the operation whose job is to report such problems as data
    rather than as an InvalidRequestException (ValidateSecurityProfileBehaviors).
    """

    handler: Handler
    checks_constraints: bool = False
    #: False for a write that changes nothing detection reads (profiles, their targets, the
    #: registry and groups, custom metrics, dimensions): no cache is dropped and no sweep runs
    #: after it. The console's behavior builder validates as an operator types, and a bulk
    #: verification writes a hundred at once: each made every alarm be swept under the detection
    #: lock and every process drop its control-plane snapshot.
    changes_monitoring: bool = True
    #: The handler takes ``request_host=``: the host the request was addressed to (DescribeEndpoint).
    takes_request_host: bool = False


class OperationTable:
    """The operations one handler module implements: model operation name -> implementation."""

    def __init__(self) -> None:
        self.implementations: dict[str, Implementation] = {}

    def __call__(self, name: str, *, checks_constraints: bool = False,
                 changes_monitoring: bool = True, takes_request_host: bool = False) -> Callable[[H], H]:
        """Declare the decorated function as the implementation of the model operation ``name``."""

        def register(fn: H) -> H:
            if name in self.implementations:
                raise RuntimeError(f"operation {name} declared twice")
            self.implementations[name] = Implementation(fn, checks_constraints, changes_monitoring, takes_request_host)
            return fn

        return register
