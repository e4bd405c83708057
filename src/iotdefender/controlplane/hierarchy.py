"""Thing-group hierarchy arithmetic on a child -> parent map (pure, no I/O).

A profile attached to a parent group monitors the things of every descendant group, and
ListSecurityProfilesForTarget(recursive=true) walks the other way; both are answered here.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_DEPTH = 7  # AWS IoT: "a thing group hierarchy can have at most 7 levels"


def ancestors(group: str, parents: Mapping[str, str | None]) -> list[str]:
    """The group's parents from the closest to the root."""
    chain: list[str] = []
    current = parents.get(group)
    while current is not None and current not in chain:
        chain.append(current)
        current = parents.get(current)
    return chain


def descendants(group: str, parents: Mapping[str, str | None]) -> list[str]:
    """Every group below ``group`` (children, grandchildren …), sorted by name."""
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    found: list[str] = []
    stack = list(children.get(group, ()))
    while stack:
        name = stack.pop()
        if name in found:
            continue
        found.append(name)
        stack.extend(children.get(name, ()))
    return sorted(found)


def depth(group: str, parents: Mapping[str, str | None]) -> int:
    """1 for a root group."""
    return 1 + len(ancestors(group, parents))


def root_of(group: str, parents: Mapping[str, str | None]) -> str:
    chain = ancestors(group, parents)
    return chain[-1] if chain else group
