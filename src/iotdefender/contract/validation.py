"""Server-side input validation from the service model.

botocore validates only what a client can (required members, types, ``min``) and deliberately
skips ``max``, ``pattern`` and ``enum`` (``botocore/validate.py``), so a server that trusted
its clients would accept ``consecutiveDatapointsToAlarm: 100000``. We run botocore's own
``ParamValidator`` first (its findings reworded as AWS words them: ``validation_report.py``),
then walk the shapes for the constraints it leaves to the service.
"""

from __future__ import annotations

import functools
from typing import Any

import regex
from botocore.model import ListShape, MapShape, Shape, StringShape, StructureShape

from iotdefender.contract.errors import invalid_request
from iotdefender.contract.validation_report import model_problems, validation_error
from iotdefender.contract.validation_report import problem as worded_problem

# The model's patterns are Java regexes. Java's POSIX classes are US-ASCII only
# (java.util.regex.Pattern, "POSIX character classes (US-ASCII only)"), while the ``regex``
# module reads them as Unicode properties; translate them so we accept exactly what AWS does.
_JAVA_POSIX = {
    r"\p{Graph}": r"\x21-\x7e",
    r"\p{Print}": r"\x20-\x7e",
    r"\p{Cntrl}": r"\x00-\x1f\x7f",
    r"\p{Alnum}": r"a-zA-Z0-9",
    r"\p{Alpha}": r"a-zA-Z",
    r"\p{Digit}": r"0-9",
    r"\p{Punct}": r"!-/:-@\[-`{-~",
    r"\p{Space}": r" \t\n\x0b\f\r",
}


# Strings the model gives no pattern still never hold control characters: AWS refuses them
# (reference §3.3), and PostgreSQL cannot store NUL in text or jsonb at all, so letting one through
# would make the answer depend on the database. Thing names as Device Defender sees them
# (DeviceDefenderThingName: client IDs of unregistered devices too) follow the rule MQTT ingest
# applies to the thing of a report topic: no C0/C1 control character, tab and newline included.
_THING_NAME_SHAPES = frozenset({"DeviceDefenderThingName"})
_NO_CONTROL = regex.compile(r"[\p{Cc}]")
_NO_CONTROL_EXCEPT_SPACING = regex.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# AWS reads the model's integers and longs as Java's int and long: a JSON number outside their
# range cannot be one (2**63 parses here as a Python int, so the bound is checked, not assumed).
_JAVA_RANGE = {"integer": (-2**31, 2**31 - 1), "long": (-2**63, 2**63 - 1)}


def _unpatterned_problem(shape: Shape, value: str, where: str) -> str | None:
    forbidden = _NO_CONTROL if shape.name in _THING_NAME_SHAPES else _NO_CONTROL_EXCEPT_SPACING
    found = forbidden.search(value)
    if found is None:
        return None
    return f"{where} must not contain control characters (found U+{ord(found.group()):04X})"


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> regex.Pattern[str]:
    for java, ours in _JAVA_POSIX.items():
        pattern = pattern.replace(java, ours)
    return regex.compile(pattern)


def _check(shape: Shape, value: Any, where: str, problems: list[str]) -> None:
    meta = shape.metadata
    if value is None:
        return
    if isinstance(shape, StringShape) and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} must be at most {meta['max']} characters long")
        if shape.enum and value not in shape.enum:
            problems.append(f"{where} must be one of: {', '.join(shape.enum)}")
        if "pattern" in meta:
            if not _compiled(meta["pattern"]).fullmatch(value):
                problems.append(f"{where} {value!r} does not match the pattern {meta['pattern']}")
        elif not shape.enum:
            problem = _unpatterned_problem(shape, value, where)
            if problem:
                problems.append(problem)
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        low, high = _JAVA_RANGE[shape.type_name]
        if not low <= value <= high:
            problems.append(worded_problem(value, where, f"Member must have value {'less' if value > high else 'greater'} "
                                                         f"than or equal to {high if value > high else low}"))
        elif "max" in meta and value > meta["max"]:
            problems.append(f"{where.rsplit('.', 1)[-1]} {value} should be in range[{meta.get('min', '')},{meta['max']}]")
    elif isinstance(shape, ListShape) and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} must have at most {meta['max']} elements")
        for index, item in enumerate(value):
            _check(shape.member, item, f"{where}[{index}]", problems)
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} must have at most {meta['max']} entries")
        for key, item in value.items():
            _check(shape.key, key, f"{where} key", problems)
            _check(shape.value, item, f"{where}.{key}", problems)
    elif isinstance(shape, StructureShape) and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                _check(member, value[name], f"{where}.{name}" if where else name, problems)


def constraint_problems(shape: Shape, value: Any, where: str = "") -> list[str]:
    """The max/pattern/enum violations in ``value``, one message each."""
    problems: list[str] = []
    _check(shape, value, where, problems)
    return problems


def validate_value(shape: Shape, value: Any, where: str) -> None:
    """Raise InvalidRequestException unless ``value`` obeys ``shape``'s constraints: for the
    extension endpoints, whose inputs are not an operation's but are the model's names."""
    problems = constraint_problems(shape, value, where)
    if problems:
        raise invalid_request("; ".join(problems))


def validate_input(shape: Shape | None, params: dict[str, Any], constraints: bool = True) -> None:
    """Raise InvalidRequestException naming every problem of the input, or return.

    ``constraints=False`` leaves max/pattern/enum to the operation, for the one operation whose
    job is to report such problems as data (ValidateSecurityProfileBehaviors).
    """
    if shape is None:
        return
    problems = model_problems(shape, params)
    if not problems and constraints:
        problems = constraint_problems(shape, params)
    if problems:
        raise validation_error(problems)
