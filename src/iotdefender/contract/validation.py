"""Server-side input validation from the service model.

botocore validates only what a client can (required members, types, ``min``) and deliberately
skips ``max``, ``pattern`` and ``enum`` (``botocore/validate.py``), so a server that trusted
its clients would accept ``consecutiveDatapointsToAlarm: 100000``. We run botocore's own
``ParamValidator`` first (its findings reworded as AWS words them: ``validation_report.py``),
then walk the shapes for the constraints it leaves to the service.

What the walk finds is worded as AWS's request validation words it, each problem
``Value '<value>' at '<member>' failed to satisfy constraint: <constraint>``, counted and joined
with "; " after "N validation error(s) detected: " (``validation_report.validation_error``):

- a string or list longer than the model's ``max``, and a map with more entries:
  ``Member must have length less than or equal to 128``, the value quoted as a list ``[a, b]``
  or a map ``{k=v}``. AWS IoT itself (UpdateThing, aws/aws-sdk-java#666) lists "Member must have
  length less than or equal to 128"; a list over its max, AWS Config PutEvaluations
  (awslabs/aws-config-rules#101): "Value '...' at 'evaluations' failed to satisfy constraint:
  Member must have length less than or equal to 100".
- a pattern: ``Member must satisfy regular expression pattern: [a-zA-Z0-9_]+``, the model's
  pattern as written. AWS IoT CreateTopicRule, as moto reproduces it from AWS's answer
  (getmoto/moto#7548, fixed in #7572): "1 validation error detected: Value 'test-rule' at
  'ruleName' failed to satisfy constraint: Member must satisfy regular expression pattern:
  ^[a-zA-Z0-9_]+$"; the same words from Lambda, EventBridge, Kinesis, Cognito.
- an enum: ``Member must satisfy enum value set: [A, B]`` (DynamoDB, Lambda, IAM, e.g.
  "Value 'hi' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum
  value set: [INDEXES, TOTAL, NONE]"). AWS lists the values in its own set's order, which is not
  always the model's; we list them in the model's.
- an integer over the model's ``max``: ``Member must have value less than or equal to 250``
  (AppConfig, rebuy-de/aws-nuke#1074: "Value '100' at 'maxResults' failed to satisfy constraint:
  Member must have value less than or equal to 50"), the words botocore's ``min`` problems and
  the Java range check below already use. Inside a behavior, the range of an integer is judged by
  IoT's own behavior check instead, which AWS words "Behavior Authorization is malformed.
  consecutiveDatapointsToAlarm 100000 should be in range[1,10]" (the AWS CLI's example of
  ValidateSecurityProfileBehaviors): AWS reports that one as data, so its request validation did
  not refuse it, and a Create or Update with it is refused in the same words.
- keys and values of a map, once per map and at the map: ``Map keys must satisfy constraint:
  [<every constraint of the key>]``, ``Map value must satisfy constraint: [...]``. AWS IoT,
  aws/aws-sdk-java#666: "2 validation errors detected: Value '{"state"={...}}' at
  'attributePayload.attributes' failed to satisfy constraint: Map keys must satisfy constraint:
  [Member must have length less than or equal to 128, Member must have length greater than or
  equal to 0, Member must satisfy regular expression pattern: [a-zA-Z0-9_.,@/:#-]+]; ...".

Members are named as botocore names them (``behaviors[0].name``), as the problems botocore finds
are; AWS's own request validation writes list items ``behaviors.1.member.name`` (WAFv2, Cognito,
IAM), which no AWS IoT answer we found shows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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
_NO_CONTROL_WORDS = "Member must not contain control characters"


# AWS reads the model's integers and longs as Java's int and long: a JSON number outside their
# range cannot be one (2**63 parses here as a Python int, so the bound is checked, not assumed).
_JAVA_RANGE = {"integer": (-2**31, 2**31 - 1), "long": (-2**63, 2**63 - 1)}

#: The structure whose members IoT's behavior check judges (see the integer range above).
_BEHAVIOR_SHAPE = "Behavior"


@dataclass(frozen=True)
class Violation:
    """One broken constraint: ``where`` (botocore's path) holds ``value``, which breaks
    ``constraint`` in AWS's words; ``plain`` is the same in the words ValidateSecurityProfileBehaviors
    reports; ``behavior`` names the behavior it is in, if any; ``behavior_rule`` says IoT's behavior
    check judges it, not the request validation."""

    where: str
    value: Any
    constraint: str
    plain: str
    behavior: str | None = None
    behavior_rule: bool = False

    def aws_worded(self) -> str:
        return worded_problem(self.value, self.where, self.constraint)


def _control_character(shape: Shape, value: str) -> str | None:
    forbidden = _NO_CONTROL if shape.name in _THING_NAME_SHAPES else _NO_CONTROL_EXCEPT_SPACING
    found = forbidden.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> regex.Pattern[str]:
    for java, ours in _JAVA_POSIX.items():
        pattern = pattern.replace(java, ours)
    return regex.compile(pattern)


def _longest(meta: dict[str, Any]) -> str:
    return f"Member must have length less than or equal to {meta['max']}"


def _pattern_words(meta: dict[str, Any]) -> str:
    return f"Member must satisfy regular expression pattern: {meta['pattern']}"


def _enum_words(enum: list[str]) -> str:
    return f"Member must satisfy enum value set: [{', '.join(enum)}]"


def _string_constraints(shape: Shape, broken: list[Violation]) -> list[str]:
    """Every constraint of a string shape, in the order AWS lists a map key's (max, min, pattern);
    ours on strings without a pattern only when ``broken`` breaks it."""
    meta = shape.metadata
    enum = shape.enum if isinstance(shape, StringShape) else []
    out = []
    if "max" in meta:
        out.append(_longest(meta))
    if "min" in meta:
        out.append(f"Member must have length greater than or equal to {meta['min']}")
    if "pattern" in meta:
        out.append(_pattern_words(meta))
    if enum:
        out.append(_enum_words(enum))
    if any(v.constraint.startswith(_NO_CONTROL_WORDS) for v in broken):
        out.append(_NO_CONTROL_WORDS)
    return out


def _check_string(shape: StringShape, value: str, where: str, found: list[Violation], behavior: str | None) -> None:
    meta = shape.metadata
    if "max" in meta and len(value) > meta["max"]:
        found.append(Violation(where, value, _longest(meta),
                               f"{where} must be at most {meta['max']} characters long", behavior))
    if shape.enum and value not in shape.enum:
        found.append(Violation(where, value, _enum_words(shape.enum),
                               f"{where} must be one of: {', '.join(shape.enum)}", behavior))
    if "pattern" in meta:
        if not _compiled(meta["pattern"]).fullmatch(value):
            found.append(Violation(where, value, _pattern_words(meta),
                                   f"{where} {value!r} does not match the pattern {meta['pattern']}", behavior))
    elif not shape.enum:
        character = _control_character(shape, value)
        if character:
            found.append(Violation(where, value, f"{_NO_CONTROL_WORDS} (found {character})",
                                   f"{where} must not contain control characters (found {character})", behavior))


def _check_integer(shape: Shape, value: int, where: str, found: list[Violation], behavior: str | None) -> None:
    meta = shape.metadata
    low, high = _JAVA_RANGE[shape.type_name]
    if not low <= value <= high:
        constraint = (f"Member must have value {'less' if value > high else 'greater'} than or equal to "
                      f"{high if value > high else low}")
        found.append(Violation(where, value, constraint, worded_problem(value, where, constraint), behavior))
    elif "max" in meta and value > meta["max"]:
        found.append(Violation(where, value, f"Member must have value less than or equal to {meta['max']}",
                               f"{where.rsplit('.', 1)[-1]} {value} should be in range[{meta.get('min', '')},"
                               f"{meta['max']}]", behavior, behavior_rule=behavior is not None))


def _check_map_part(shape: Shape, items: Any, mapping: dict[str, Any], where: str, part: str,
                    found: list[Violation], behavior: str | None) -> None:
    """The keys (``part`` "key") or scalar values ("value") of a map: AWS reports them once, at the
    map, with every constraint of the key (or value) shape."""
    broken: list[Violation] = []
    for item in items:
        _check(shape, item, f"{where} {part}", broken, behavior)
    if broken:
        constraints = ", ".join(_string_constraints(shape, broken))
        noun = "Map keys" if part == "key" else "Map value"
        found.append(Violation(where, mapping, f"{noun} must satisfy constraint: [{constraints}]",
                               "; ".join(v.plain for v in broken), behavior))


def _check(shape: Shape, value: Any, where: str, found: list[Violation], behavior: str | None = None) -> None:
    meta = shape.metadata
    if value is None:
        return
    if isinstance(shape, StringShape) and isinstance(value, str):
        _check_string(shape, value, where, found, behavior)
    elif shape.type_name in ("integer", "long") and isinstance(value, int):
        _check_integer(shape, value, where, found, behavior)
    elif isinstance(shape, ListShape) and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            found.append(Violation(where, value, _longest(meta), f"{where} must have at most {meta['max']} elements",
                                   behavior))
        for index, item in enumerate(value):
            _check(shape.member, item, f"{where}[{index}]", found, behavior)
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            found.append(Violation(where, value, _longest(meta), f"{where} must have at most {meta['max']} entries",
                                   behavior))
        _check_map_part(shape.key, value.keys(), value, where, "key", found, behavior)
        if isinstance(shape.value, StringShape):
            _check_map_part(shape.value, value.values(), value, where, "value", found, behavior)
        else:
            for key, item in value.items():
                _check(shape.value, item, f"{where}.{key}", found, behavior)
    elif isinstance(shape, StructureShape) and isinstance(value, dict):
        if shape.name == _BEHAVIOR_SHAPE:
            behavior = str(value.get("name"))
        for name, member in shape.members.items():
            if name in value:
                _check(member, value[name], f"{where}.{name}" if where else name, found, behavior)


def violations(shape: Shape, value: Any, where: str = "") -> list[Violation]:
    """The max/pattern/enum violations in ``value``, one each."""
    found: list[Violation] = []
    _check(shape, value, where, found)
    return found


def constraint_problems(shape: Shape, value: Any, where: str = "") -> list[str]:
    """The max/pattern/enum violations in ``value``, one message each, in AWS's words."""
    return [v.aws_worded() for v in violations(shape, value, where)]


def behavior_problems(shape: Shape, behavior: dict[str, Any]) -> list[str]:
    """The max/pattern/enum violations of one behavior, as ValidateSecurityProfileBehaviors reports
    them: "Behavior X is malformed. consecutiveDatapointsToAlarm 100000 should be in range[1,10]"."""
    return [f"Behavior {behavior.get('name')} is malformed. {v.plain}" for v in violations(shape, behavior)]


def validate_value(shape: Shape, value: Any, where: str) -> None:
    """Raise InvalidRequestException unless ``value`` obeys ``shape``'s constraints: for the
    extension endpoints, whose inputs are not an operation's but are the model's names."""
    problems = constraint_problems(shape, value, where)
    if problems:
        raise validation_error(problems)


def validate_input(shape: Shape | None, params: dict[str, Any], constraints: bool = True) -> None:
    """Raise InvalidRequestException naming every problem of the input, or return.

    ``constraints=False`` leaves max/pattern/enum to the operation, for the one operation whose
    job is to report such problems as data (ValidateSecurityProfileBehaviors). The range of an
    integer inside a behavior is IoT's behavior check, after the request validation, and is
    refused in that check's words.
    """
    if shape is None:
        return
    problems = model_problems(shape, params)
    if problems:
        raise validation_error(problems)
    if not constraints:
        return
    found = violations(shape, params)
    requested = [v.aws_worded() for v in found if not v.behavior_rule]
    if requested:
        raise validation_error(requested)
    if found:
        raise invalid_request(" ".join(f"Behavior {v.behavior} is malformed. {v.plain}" for v in found))
