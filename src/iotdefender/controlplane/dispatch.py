"""The one path every operation call takes, whether it came over HTTP (the API) or from a page
of the console: find the implementation, validate the input against the model, run the handler
in its own transaction, then tell the caches that something changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy.exc
from botocore.model import OperationModel

from iotdefender.contract.errors import ApiError
from iotdefender.contract.service_model import service_model
from iotdefender.contract.validation import validate_input
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import Handler, Implementation, Params

_CONFLICT_RETRIES = 3


class Dispatcher:
    """Validate → run → after-change, for the API and the console alike."""

    def __init__(self, context: ServiceContext, implementations: Mapping[str, Implementation],
                 after_change: Callable[[], None],
                 after_write: Callable[[str, Params, Params], None] | None = None) -> None:
        """``after_change`` runs after every successful write (a non-GET operation) that changes
        what detection reads (``Implementation.changes_monitoring``), so caches of the control
        plane (which profiles monitor a thing) stay exact; ``after_write`` then gets
        the operation's name, input and output (warnings about what was written, in the log; the
        certificate a create made)."""
        self.context = context
        self._implementations = implementations
        self._after_change = after_change
        self._after_write = after_write

    def implementation(self, operation_name: str) -> Implementation:
        """The operation's implementation; NotImplementedException (501) for model operations
        iotdefender does not implement, instead of pretending to work."""
        implementation = self._implementations.get(operation_name)
        if implementation is None:
            raise ApiError("NotImplementedException", f"iotdefender does not implement {operation_name}")
        return implementation

    def call(self, operation: OperationModel, params: Params, **extra: Any) -> Params:
        """Run ``operation`` on ``params`` (botocore member names) and return its output members.

        ``extra`` reaches handlers that take console-only keywords (e.g. ``behavior_name``).
        Blocking: the API calls it from a worker thread.
        """
        implementation = self.implementation(operation.name)
        validate_input(operation.input_shape, params, constraints=not implementation.checks_constraints)
        handler = functools.partial(implementation.handler, **extra) if extra else implementation.handler
        output = self._run(handler, params)
        if operation.http.get("method") != "GET":
            if implementation.changes_monitoring:
                self._after_change()
            if self._after_write is not None:
                self._after_write(operation.name, params, output)
        return output

    def call_by_name(self, operation_name: str, params: Params, **extra: Any) -> Params:
        """``call`` for an operation named as in the model (the console's calls)."""
        self.implementation(operation_name)
        return self.call(service_model().operation_model(operation_name), params, **extra)

    def _run(self, handler: Handler, params: Params) -> Params:
        # Two writers racing on the same new name: the loser's INSERT violates a key. Running
        # the handler again lets it see the winner's row and answer exactly as AWS would
        # (ResourceAlreadyExists, VersionConflict …) instead of a database error.
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return handler(self.context, params)
            except sqlalchemy.exc.IntegrityError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")
