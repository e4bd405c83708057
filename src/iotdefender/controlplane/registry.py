"""Every implemented model operation, gathered from the handler modules' own tables.

The top of the control plane: it imports the handler modules, which never import it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from iotdefender.controlplane import (
    behavior_models,
    certificates,
    custom_metrics,
    detect_mitigation_tasks,
    dimensions,
    endpoint,
    metric_values,
    mitigation_actions,
    security_profiles,
    tags,
    targets,
    thing_groups,
    thing_principals,
    things,
    violations,
)
from iotdefender.controlplane.operations import Implementation

HANDLER_MODULES = (behavior_models, certificates, custom_metrics, detect_mitigation_tasks, dimensions, endpoint, metric_values,
                   mitigation_actions, security_profiles, tags, targets, thing_groups, thing_principals, things,
                   violations)


def _gather() -> Mapping[str, Implementation]:
    table: dict[str, Implementation] = {}
    for module in HANDLER_MODULES:
        for name, implementation in module.operation.implementations.items():
            if name in table:
                raise RuntimeError(f"operation {name} implemented twice ({module.__name__})")
            table[name] = implementation
    return MappingProxyType(table)


IMPLEMENTED: Mapping[str, Implementation] = _gather()
