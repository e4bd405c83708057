"""Validation problems worded as AWS words them, never as Python.

botocore's ``ParamValidator`` is written for a client: its report says "Invalid type for parameter
startTime, value: 1e+15, type: <class 'float'>, valid types: <class 'datetime.datetime'>", which
is meaningless to a caller of a REST API (who may not even use Python). AWS IoT answers
InvalidRequestException with messages such as

    2 validation errors detected: Value '...' at 'attributePayload.attributes' failed to satisfy
    constraint: Member must have length less than or equal to 128; Value null at 'thingName'
    failed to satisfy constraint: Member must not be null

so this module keeps botocore's checks (types, required members, ``min``) and rewords what they
find: each problem names the parameter and the constraint, in that form. Timestamps are checked
by ``contract/timestamps.py`` instead of botocore's parser, which raises ``RuntimeError`` and
``OverflowError`` on out-of-range numbers instead of reporting them.
"""

from __future__ import annotations

from typing import Any

from botocore.model import Shape
from botocore.validate import ParamValidator, ValidationErrors

from iotdefender.contract.errors import ApiError, invalid_request
from iotdefender.contract.timestamps import epoch_seconds

_SHOWN_VALUE_CHARS = 100

# botocore's valid-type lists (``str(type)``) as the JSON types a caller sends.
_TYPE_WORDS = {
    "<class 'int'>": "an integer",
    "<class 'float'>": "a number",
    "<class 'decimal.Decimal'>": "a number",
    "<class 'str'>": "a string",
    "<class 'bool'>": "a boolean",
    "<class 'dict'>": "a JSON object",
    "<class 'list'>": "a JSON array",
    "<class 'tuple'>": "a JSON array",
    "<class 'datetime.datetime'>": "a timestamp",
}


def _text(value: Any) -> str:
    """A value as AWS's (Java) services write it: a list as ``[a, b]``, a map as ``{k=v}`` (AWS IoT's
    UpdateThing quotes its attributes ``'{"state"={"reported":…}}'``, aws/aws-sdk-java#666), a
    boolean as ``true``."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(key)}={_text(item)}" for key, item in value.items()) + "}"
    return str(value)


def shown(value: Any) -> str:
    """A value as AWS quotes it in a message ('...'), cut short when long; None is ``null``."""
    if value is None:
        return "null"
    text = _text(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[:_SHOWN_VALUE_CHARS] + "..."
    return f"'{text}'"


def problem(value: Any, where: str, constraint: str) -> str:
    """One problem, in AWS's words: ``Value 'x' at 'where' failed to satisfy constraint: ...``."""
    return f"Value {shown(value)} at '{where}' failed to satisfy constraint: {constraint}"


def validation_error(problems: list[str]) -> ApiError:
    """InvalidRequestException listing every problem, counted as AWS counts them."""
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    return invalid_request(f"{count} validation {noun} detected: " + "; ".join(problems))


def _type_constraint(valid_types: list[str]) -> str:
    words: list[str] = []
    for name in valid_types:
        word = _TYPE_WORDS.get(name, name)
        if word not in words:
            words.append(word)
    if "a number" in words and "an integer" in words:
        words.remove("an integer")
    return "Member must be " + " or ".join(words)


class _AwsWordedErrors(ValidationErrors):
    """botocore's collected errors (``(kind, name, details)`` in ``_errors``, botocore 1.44),
    formatted as AWS formats validation problems."""

    def problems(self) -> list[str]:
        collected: list[tuple[str, str, dict[str, Any]]] = getattr(self, "_errors")
        return [_aws_wording(kind, name, extra) for kind, name, extra in collected]


def _aws_wording(kind: str, name: str, extra: dict[str, Any]) -> str:
    where = name.lstrip(".") or "input"  # botocore's names start with "." below the top level
    if kind == "missing required field":
        member = extra["required_name"]
        return problem(None, f"{where}.{member}" if name else member, "Member must not be null")
    if kind == "unknown field":
        return problem(extra["unknown_param"], where,
                       "Member must be one of the parameters " + ", ".join(extra["valid_names"]))
    if kind == "invalid type":
        return problem(extra["param"], where, _type_constraint(extra["valid_types"]))
    if kind == "invalid timestamp":
        return problem(extra["param"], where, extra["constraint"])
    if kind == "invalid range":
        return problem(extra["param"], where, f"Member must have value greater than or equal to {extra['min_allowed']}")
    if kind == "invalid length":
        return problem(extra["param"], where, f"Member must have length greater than or equal to {extra['min_allowed']}")
    if kind in ("more than one input", "empty input"):
        return problem(None, where, "Member must set exactly one of " + ", ".join(extra["members"]))
    return problem(extra.get("param"), where, "Member must be a valid value")


class _QuotingTheValue:
    """botocore's errors as ``range_check`` reaches them, with the checked value itself in a length
    problem of the member at ``name``: botocore passes ``len(param)`` as the value (made for its
    client-side report, "Invalid length for parameter x, value: 5"), and AWS quotes the value."""

    def __init__(self, errors: ValidationErrors, name: str, value: Any) -> None:
        self._errors, self._name, self._value = errors, name, value

    def report(self, name: str, reason: str, **kwargs: Any) -> None:
        if reason == "invalid length" and name == self._name:
            kwargs["param"] = self._value
        self._errors.report(name, reason, **kwargs)


class _AwsParamValidator(ParamValidator):
    """botocore's validator with AWS wording and a timestamp check that cannot raise.

    botocore dispatches each shape to ``_validate_<type>`` (``ParamValidator._validate``); the
    overrides below are those hooks, reached through ``getattr`` because its type stubs declare
    only the public ``validate``.
    """

    def validate(self, params: Any, shape: Shape) -> _AwsWordedErrors:
        errors = _AwsWordedErrors()
        getattr(self, "_validate")(params, shape, errors, "")
        return errors

    def _validate_integer(self, param: Any, shape: Shape, errors: ValidationErrors, name: str) -> None:
        if isinstance(param, bool):  # a bool is an int to Python, not to JSON or to AWS
            errors.report(name, "invalid type", param=param, valid_types=[str(int)])
            return
        getattr(super(), "_validate_integer")(param, shape, errors, name)

    def _validate_long(self, param: Any, shape: Shape, errors: ValidationErrors, name: str) -> None:
        if isinstance(param, bool):
            errors.report(name, "invalid type", param=param, valid_types=[str(int)])
            return
        getattr(super(), "_validate_long")(param, shape, errors, name)

    def _validate_string(self, param: Any, shape: Shape, errors: ValidationErrors, name: str) -> None:
        getattr(super(), "_validate_string")(param, shape, _QuotingTheValue(errors, name, param), name)

    def _validate_list(self, param: Any, shape: Shape, errors: ValidationErrors, name: str) -> None:
        # The items are validated inside with the same errors: only this list's own length is requoted.
        getattr(super(), "_validate_list")(param, shape, _QuotingTheValue(errors, name, param), name)

    def _validate_timestamp(self, param: Any, shape: Shape, errors: ValidationErrors, name: str) -> None:
        try:
            epoch_seconds(param)
        except ValueError as refusal:
            errors.report(name, "invalid timestamp", param=param, constraint=str(refusal))


def model_problems(shape: Shape, params: dict[str, Any]) -> list[str]:
    """What botocore's checks (types, required members, ``min``) find in ``params``, in AWS's words."""
    return _AwsParamValidator().validate(params, shape).problems()
