"""The table from model operation names to the functions that implement them.

Handlers take the validated input (botocore member names) and return the output members; the
API layer does all wire work, so a handler reads like the AWS documentation of its operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotdefender.controlplane.context import ServiceContext

Params = dict[str, Any]
Handler = Callable[[ServiceContext, Params], Params]

OPERATIONS: dict[str, Handler] = {}

# Operations that check the model's max/pattern/enum constraints themselves, to report them as
# data rather than as an InvalidRequestException.
SELF_VALIDATING: set[str] = {"ValidateSecurityProfileBehaviors"}


def operation(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the implementation of the model operation ``name``."""

    def register(fn: Handler) -> Handler:
        if name in OPERATIONS:
            raise RuntimeError(f"operation {name} registered twice")
        OPERATIONS[name] = fn
        return fn

    return register


def load_all() -> dict[str, Handler]:
    """Import every module that registers operations and return the table."""
    from iotdefender.controlplane import (  # noqa: F401  (imported for registration)
        custom_metrics,
        dimensions,
        metric_values,
        security_profiles,
        tags,
        targets,
        thing_groups,
        things,
        violations,
    )

    return OPERATIONS
