"""What versioned resources share: the expectedVersion check and attribute merging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iotdefender.contract.errors import version_conflict


def check_expected_version(params: Mapping[str, Any], row: Mapping[str, Any], what: str) -> None:
    """VersionConflictException when the caller's expectedVersion is not the stored version."""
    expected = params.get("expectedVersion")
    if expected is not None and expected != row["version"]:
        raise version_conflict(f"{what} is at version {row['version']}, not the expected version {expected}")


def merge_attributes(current: Mapping[str, str], payload: Mapping[str, Any]) -> dict[str, str]:
    """AttributePayload semantics: merge=false replaces the set, merge=true adds to it; in both,
    an empty value removes that attribute (AWS UpdateThing / UpdateThingGroup documentation)."""
    attributes = dict(current) if payload.get("merge") else {}
    for key, value in (payload.get("attributes") or {}).items():
        if value == "":
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return attributes
