"""rest-json request parsing and response serialisation, driven by the operation's shapes.

The server mirrors botocore's client serializer (``botocore/serialize.py``,
``RestJSONSerializer``): members bound to ``uri``, ``querystring`` and ``header`` locations are
read from there, every other member from the JSON body. Timestamps arrive as ISO-8601 in query
strings and epoch seconds in bodies, and leave as epoch-second floats with millisecond precision,
which is what AWS returns (``"creationDate": 1560278102.528``).
"""

from __future__ import annotations

import base64
import math
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import orjson
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from iotdefender.contract.errors import invalid_request
from iotdefender.contract.timestamps import answered, epoch_seconds
from iotdefender.contract.validation_report import problem, validation_error


_TEXT_CONSTRAINTS = {
    "integer": "Member must be an integer",
    "long": "Member must be an integer",
    "double": "Member must be a finite number",
    "float": "Member must be a finite number",
    "boolean": "Member must be true or false",
}


def _scalar_from_text(shape: Shape, text: str, where: str) -> Any:
    kind = shape.type_name
    try:
        if kind == "string":
            return text
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("double", "float"):
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        if kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind == "timestamp":
            return epoch_seconds(text)
    except ValueError as refusal:
        constraint = str(refusal) if kind == "timestamp" else _TEXT_CONSTRAINTS[kind]
        raise validation_error([problem(text, where, constraint)]) from None
    raise invalid_request(f"Unsupported parameter type {kind} for {where}")


def _body_value(shape: Shape, value: Any, where: str) -> Any:
    """Convert the JSON body's timestamps and blobs; other types are checked by the validator."""
    kind = shape.type_name
    if value is None:
        return None
    if kind == "timestamp":
        try:
            return epoch_seconds(value)
        except ValueError as refusal:
            raise validation_error([problem(value, where, str(refusal))]) from None
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise invalid_request(f"Invalid base64 for {where}") from None
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        out = {}
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[name] = _body_value(member, value[name], f"{where}.{name}")
        return out
    if isinstance(shape, ListShape) and isinstance(value, list):
        return [_body_value(shape.member, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(shape, MapShape) and isinstance(value, dict):
        return {k: _body_value(shape.value, v, f"{where}.{k}") for k, v in value.items()}
    return value


def parse_request(
    operation: OperationModel,
    path_params: dict[str, str],
    raw_query: str,
    headers: dict[str, str],
    body: bytes,
) -> dict[str, Any]:
    """Build the operation's input parameters (botocore names) from an HTTP request."""
    shape = operation.input_shape
    params: dict[str, Any] = {}
    if shape is None:
        return params
    try:
        query = parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("The query string is not valid UTF-8 percent-encoding") from None
    query_multi: dict[str, list[str]] = {}
    for key, value in query:
        query_multi.setdefault(key, []).append(value)

    body_members = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire: str = member.serialization.get("name") or name
        if location == "uri":
            if wire in path_params:
                params[name] = _scalar_from_text(member, path_params[wire], name)
        elif location == "querystring":
            if isinstance(member, ListShape):
                if wire in query_multi:
                    params[name] = [
                        _scalar_from_text(member.member, v, name) for v in query_multi[wire]
                    ]
            elif member.type_name == "map":
                params[name] = {k: v[-1] for k, v in query_multi.items()}
            elif wire in query_multi:
                params[name] = _scalar_from_text(member, query_multi[wire][-1], name)
        elif location == "header":
            header = headers.get(wire.lower())
            if header is not None:
                params[name] = _scalar_from_text(member, header, name)
        elif location is None:
            body_members[name] = member

    if body_members and body.strip():
        document = _json_body(body)
        if not isinstance(document, dict):
            raise invalid_request("The request body must be a JSON object")
        for name, member in body_members.items():
            if document.get(name) is not None:
                params[name] = _body_value(member, document[name], name)
    return params


def _json_body(body: bytes) -> Any:
    """The request's JSON document. Read by msgspec, which keeps an integer an integer however
    large: orjson read one past 2**64 as a float, so a count of 10**23 sent by the AWS CLI was
    refused as "Value '1e+23' ... Member must be an integer" (an outside-in run), where the
    model's range is the answer ("less than or equal to 9223372036854775807")."""
    try:
        return msgspec.json.decode(body)
    except msgspec.ValidationError as error:  # an integer of thousands of digits
        raise invalid_request(f"The request body holds a number out of range ({error})") from None
    except msgspec.DecodeError:
        raise invalid_request("The request body is not valid JSON") from None
    except UnicodeDecodeError:  # msgspec raises it for bytes that are not UTF-8 inside a string
        raise invalid_request("The request body is not valid UTF-8") from None
    except RecursionError:  # orjson stopped at a depth of 1024; msgspec at Python's recursion limit
        raise invalid_request("The request body is nested too deeply") from None


def _render(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if value is None:
        return None
    if kind == "timestamp":
        return answered(float(value))
    if isinstance(shape, StructureShape):
        return {
            k: _render(m, value[k]) for k, m in shape.members.items() if value.get(k) is not None
        }
    if isinstance(shape, ListShape):
        return [_render(shape.member, v) for v in value]
    if isinstance(shape, MapShape):
        return {k: _render(shape.value, v) for k, v in value.items()}
    if kind == "blob":
        return base64.b64encode(value).decode()
    return value


def serialize_response(operation: OperationModel, output: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Render an operation's output dict as status, headers and JSON body."""
    shape = operation.output_shape
    headers: dict[str, str] = {}
    status = 200
    document: dict[str, Any] = {}
    if shape is not None:
        for name, member in shape.members.items():
            if output.get(name) is None:
                continue
            location = member.serialization.get("location")
            if location == "header":
                headers[member.serialization.get("name", name)] = str(output[name])
            elif location == "statusCode":
                status = int(output[name])
            else:
                document[name] = _render(member, output[name])
    return status, headers, orjson.dumps(document)
