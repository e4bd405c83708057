"""Parse and validate Device Defender metrics reports (JSON or CBOR, long or short keys).

The document is AWS's "device metrics document specification" (reference §4.2). It is decoded
straight into typed msgspec Structs, so decoding *is* validation (types, required members, value
ranges) at the speed of a bare decode; every failure carries the path of the offending member.
Short key names (``hed``/``rid``/``met`` …, used by the embedded SDK by default) get their own
Struct family built from the same field table, so both forms share one definition.

Reports that AWS documents as rejected (malformed, custom metric not wrapped in a one-element
array) answer ``InvalidPayload`` / ``Malformed metrics report`` as AWS does; the detail after the
colon says exactly what is wrong. Cases AWS leaves undocumented get the codes of ``RejectCode``.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, NoReturn

import cbor2
import msgspec

from iotdefender.metrics_catalog import COUNT_MAX
from iotdefender.net_address import ip_of_endpoint

MAX_REPORT_BYTES = 128 * 1024  # AWS IoT Core's MQTT payload limit; Detect documents no other
MAX_THING_NAME_BYTES = 128  # "rejected … if the thing name is longer than 128 bytes of UTF-8"
MAX_LIST_ELEMENTS = 1000  # per list in a report; far above the agents' 50, bounds evaluation cost


class RejectCode(str, Enum):
    """ErrorCode values of ``/rejected`` replies (docs/ingest-rejections.md lists each case)."""

    INVALID_PAYLOAD = "InvalidPayload"  # AWS's own code for malformed reports
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    INVALID_THING_NAME = "InvalidThingName"
    UNKNOWN_CUSTOM_METRIC = "UnknownCustomMetric"
    CUSTOM_METRIC_TYPE_MISMATCH = "CustomMetricTypeMismatch"
    THROTTLED = "Throttled"
    DUPLICATE_REPORT_ID = "DuplicateReportId"
    STALE_REPORT_ID = "StaleReportId"
    # Retryable: the report was not stored because of the service's state, not its content.
    SERVICE_UNAVAILABLE = "ServiceUnavailable"  # the database is unreachable
    SERVICE_OVERLOADED = "ServiceOverloaded"  # the ingest queue is full (backpressure)
    INTERNAL_ERROR = "InternalError"  # a defect met while handling this one report


class ReportRejected(Exception):
    def __init__(self, code: RejectCode, message: str, report_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.report_id = report_id


def malformed(detail: str, report_id: int | None = None) -> ReportRejected:
    return ReportRejected(RejectCode.INVALID_PAYLOAD, f"Malformed metrics report: {detail}", report_id)


Count = Annotated[int, msgspec.Meta(ge=0, le=COUNT_MAX)]  # AWS's MetricValue.count: a long >= 0
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
ReportId = Annotated[int, msgspec.Meta(gt=0, le=COUNT_MAX)]


def _list(item: Any) -> Any:
    return Annotated[list[item], msgspec.Meta(max_length=MAX_LIST_ELEMENTS)]


class CustomMetricValue(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One custom metric value; custom-metric keys have no short form (reference §4.2)."""

    number: float | None = None
    number_list: _list(float) | None = None  # type: ignore[valid-type]
    string_list: _list(str) | None = None  # type: ignore[valid-type]
    ip_list: _list(str) | None = None  # type: ignore[valid-type]


# (struct, field, long key, short key, type builder) — the single source of both key forms.
_FIELDS: dict[str, list[tuple[str, str, str, Any]]] = {
    "Header": [("report_id", "report_id", "rid", lambda s: ReportId),
               ("version", "version", "v", lambda s: str)],
    "PortEntry": [("port", "port", "pt", lambda s: Port | None),
                  ("interface", "interface", "if", lambda s: str | None)],
    "ListeningPorts": [("ports", "ports", "pts", lambda s: _list(s["PortEntry"]) | None),
                       ("total", "total", "t", lambda s: Count | None)],
    "NetworkStats": [("bytes_in", "bytes_in", "bi", lambda s: Count | None),
                     ("bytes_out", "bytes_out", "bo", lambda s: Count | None),
                     ("packets_in", "packets_in", "pi", lambda s: Count | None),
                     ("packets_out", "packets_out", "po", lambda s: Count | None)],
    "Connection": [("remote_addr", "remote_addr", "rad", lambda s: str),
                   ("local_port", "local_port", "lp", lambda s: Port | None),
                   ("local_interface", "local_interface", "li", lambda s: str | None)],
    "Established": [("connections", "connections", "cs", lambda s: _list(s["Connection"]) | None),
                    ("total", "total", "t", lambda s: Count | None)],
    "TcpConnections": [("established_connections", "established_connections", "ec",
                        lambda s: s["Established"] | None)],
    "Metrics": [("listening_tcp_ports", "listening_tcp_ports", "tp", lambda s: s["ListeningPorts"] | None),
                ("listening_udp_ports", "listening_udp_ports", "up", lambda s: s["ListeningPorts"] | None),
                ("network_stats", "network_stats", "ns", lambda s: s["NetworkStats"] | None),
                ("tcp_connections", "tcp_connections", "tc", lambda s: s["TcpConnections"] | None)],
    "Report": [("header", "header", "hed", lambda s: s["Header"]),
               ("metrics", "metrics", "met", lambda s: s["Metrics"] | None),
               ("custom_metrics", "custom_metrics", "cmet", lambda s: s["CustomMetrics"] | None)],
}


def _family(short: bool, typed_custom: bool) -> dict[str, type[msgspec.Struct]]:
    """The report's Structs. ``typed_custom`` decodes custom metrics as lists of CustomMetricValue in
    the same pass (fast); the untyped family keeps them raw so that a malformed one gets its own
    message (``_custom_datapoint``) — it decodes only reports the typed family refused."""
    structs: dict[str, Any] = {
        "CustomMetrics": dict[str, list[CustomMetricValue]] if typed_custom else dict[str, Any]}
    for name, fields in _FIELDS.items():  # dict order builds dependencies first
        spec = []
        for attr, _long, _short, kind in fields:
            typ = kind(structs)
            optional = typ is not ReportId and typ is not str and not (name == "Report" and attr == "header")
            spec.append((attr, typ, None) if optional else (attr, typ))
        rename = {attr: (s if short else lng) for attr, lng, s, _ in fields}
        # gc=False: a decoded report is a tree of these with no cycles, and tracking thousands
        # of them per second made the collector a visible cost of ingest (py-spy --gil).
        structs[name] = msgspec.defstruct(f"{'Short' if short else 'Long'}{name}", spec, rename=rename, gc=False)
    return structs


# (short keys, typed custom metrics) -> Report struct
_REPORTS = {(short, typed): _family(short, typed)["Report"] for short in (False, True) for typed in (False, True)}
_JSON_DECODERS = {key: msgspec.json.Decoder(struct) for key, struct in _REPORTS.items()}


@dataclass
class ParsedReport:
    """A valid report as datapoints: metric name -> MetricValue (the API's value shape)."""

    report_id: int
    version: str
    datapoints: dict[str, dict[str, Any]] = field(default_factory=dict)


# C0 and C1 controls and DEL: searched in C, not a character at a time (every report's thing name).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_thing_name(raw: bytes | str) -> str:
    """Thing names must be UTF-8, without control characters, at most 128 bytes (reference §3.3)."""
    try:
        name = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        encoded = name.encode("utf-8")
    except UnicodeError:
        raise ReportRejected(RejectCode.INVALID_THING_NAME, "Thing name is not valid UTF-8") from None
    if not name:
        raise ReportRejected(RejectCode.INVALID_THING_NAME, "Thing name is empty")
    if len(encoded) > MAX_THING_NAME_BYTES:
        raise ReportRejected(RejectCode.INVALID_THING_NAME,
                             f"Thing name is {len(encoded)} bytes of UTF-8; the maximum is {MAX_THING_NAME_BYTES}")
    if _CONTROL_CHARACTERS.search(name):
        raise ReportRejected(RejectCode.INVALID_THING_NAME, "Thing name contains control characters")
    return name


def _decode(payload: bytes, encoding: str) -> Any:
    """The typed report, or ReportRejected. Invalid UTF-8 inside a JSON string and structures
    nested too deep for the decoders (~1,000 levels; RecursionError) are malformed reports too,
    not exceptions out of the transport's callback."""
    try:
        return _decode_typed(payload, encoding)
    except RecursionError:
        raise malformed("the document is nested too deeply") from None
    except UnicodeError as error:
        raise malformed(f"not valid UTF-8 ({error})") from None


_LONG_HEAD = b'{"header"'
SELF_DESCRIBED_CBOR = b"\xd9\xd9\xf7"  # the head of tag 55799 (RFC 8949 section 3.4.6)


def cbor_document(payload: bytes) -> Any:
    """The CBOR item of a report, past any self-describe tag: RFC 8949 makes tag 55799 mean only "this
    is CBOR", so the item it wraps is the report. Its head is removed, not left to cbor2, which
    decodes a tagged item as immutable (its maps are not dicts, so the report was "not a map")."""
    while payload.startswith(SELF_DESCRIBED_CBOR):
        payload = payload[len(SELF_DESCRIBED_CBOR):]
    return cbor2.loads(payload, semantic_decoders=_NO_REFERENCES)


# Tags that make one encoded item stand for several decoded ones: value sharing (28 marks an item,
# 29 refers to it) and string references (256 opens a namespace, 25 refers to an earlier string),
# all of which cbor2 decodes. A 123 KB report of one 120 KB string and 999 references to it was
# accepted as a string-list of 120 million characters and stored so (found by an outside-in test).
# No Device Defender agent writes them; a report that holds one is refused as malformed.
_REFERENCE_TAGS = {25: "a string reference", 256: "a string reference namespace",
                   28: "a shared value", 29: "a shared value reference"}


class ReferenceRefused(ValueError):
    """A report's CBOR holds one of ``_REFERENCE_TAGS`` (cbor2 raises it as the cause of its own error)."""


def _refused(tag: int, what: str) -> Callable[..., NoReturn]:
    def refuse(*decoding: object) -> NoReturn:  # (the decoder, ...): cbor2 6.3 passes two, its docs say one
        raise ReferenceRefused(f"CBOR tag {tag} ({what}) is not accepted in a report: each value must be written out")
    return refuse


_NO_REFERENCES = {tag: _refused(tag, what) for tag, what in _REFERENCE_TAGS.items()}


def _decode_typed(payload: bytes, encoding: str) -> Any:
    if encoding == "json":
        # Agents write the header first; only a report that does not start with it is searched
        # for the short key (two scans of the whole payload were ~5% of a report's parse).
        short = not payload.startswith(_LONG_HEAD) and b'"hed"' in payload and b'"header"' not in payload
        try:
            return _JSON_DECODERS[short, True].decode(payload)
        except msgspec.ValidationError:
            pass  # decode again without typing custom metrics: their errors have messages of their own
        except msgspec.DecodeError as error:
            raise malformed(f"not valid JSON ({error})") from None
        try:
            return _JSON_DECODERS[short, False].decode(payload)
        except msgspec.ValidationError as error:
            raise malformed(str(error), report_id_hint(payload, "json")) from None
        except msgspec.DecodeError as error:  # the typed pass stopped at a type error before reaching it
            raise malformed(f"not valid JSON ({error})") from None
    try:
        document = cbor_document(payload)
    except Exception as error:  # cbor2 raises several unrelated types for bad input
        if isinstance(error.__cause__, ReferenceRefused):
            raise malformed(str(error.__cause__)) from None
        raise malformed(f"not valid CBOR ({type(error).__name__}: {error})") from None
    if not isinstance(document, dict):
        raise malformed("the report must be a map")
    short = "hed" in document and "header" not in document
    try:
        return msgspec.convert(document, _REPORTS[short, True])
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.convert(document, _REPORTS[short, False])
    except msgspec.ValidationError as error:
        raise malformed(str(error), _report_id_of(document)) from None


def _report_id_of(document: Any) -> int | None:
    if isinstance(document, dict):
        header = document.get("header") or document.get("hed")
        if isinstance(header, dict):
            rid = header.get("report_id", header.get("rid"))
            if isinstance(rid, int) and not isinstance(rid, bool):
                return rid
    return None


@functools.lru_cache(maxsize=65536)
def _ip_of(remote_addr: str) -> str:
    """``ip:port``, ``[v6]:port`` or a bare address (some agents truncate IPv6) -> the IP.

    Cached: devices talk to the same few peers, and ``ipaddress`` parsing was most of the parse
    time of a report with a dozen connections (bench/parse.py)."""
    return ip_of_endpoint(remote_addr)


# A custom metric's type -> the CustomMetricValue field that carries its values.
_VALUE_FIELD = {"number": "number", "number-list": "number_list", "string-list": "string_list",
                "ip-address-list": "ip_list"}


def _the_one_value(name: str, value: CustomMetricValue, report_id: int) -> tuple[str, Any]:
    """(field, content) of the one field a custom metric value carries; none or several is malformed."""
    number, strings = value.number, value.string_list
    if value.number_list is None and value.ip_list is None and (number is None) != (strings is None):
        # The common values (a number, a list of strings) without a list of the given fields: with
        # three custom metrics a report, building it was ~10% of parse_report.
        return ("number", number) if number is not None else ("string_list", strings)
    given = [(field_name, content) for field_name in ("number", "number_list", "string_list", "ip_list")
             if (content := getattr(value, field_name)) is not None]
    if len(given) != 1:
        raise malformed(f"custom metric {name} must carry exactly one of number, number_list, "
                        "string_list, ip_list", report_id)
    return given[0]


def _custom_datapoint(name: str, raw: Any, metric_type: str | None, report_id: int) -> dict[str, Any]:
    if metric_type is None:
        raise ReportRejected(RejectCode.UNKNOWN_CUSTOM_METRIC,
                             f"Custom metric {name} is not defined (CreateCustomMetric first)", report_id)
    # AWS rejects an unwrapped value ({"m": {"number": 0}}) as malformed: one-element array only.
    if not isinstance(raw, list) or len(raw) != 1:
        raise malformed(f"custom metric {name} must be a one-element array", report_id)
    value = raw[0]
    if not isinstance(value, CustomMetricValue):  # the untyped decode (a report with a bad custom metric)
        try:
            value = msgspec.convert(value, CustomMetricValue)
        except msgspec.ValidationError as error:
            raise malformed(f"custom metric {name}: {error}", report_id) from None
    kind, content = _the_one_value(name, value, report_id)
    expected = _VALUE_FIELD[metric_type]
    if kind != expected:
        raise ReportRejected(RejectCode.CUSTOM_METRIC_TYPE_MISMATCH,
                             f"Custom metric {name} is of type {metric_type}; the report sent {kind}", report_id)
    if kind == "number":
        if not math.isfinite(content):
            raise malformed(f"custom metric {name} is not a finite number", report_id)
        return {"number": content}
    if kind == "number_list":
        if not all(math.isfinite(x) for x in content):
            raise malformed(f"custom metric {name} holds a non-finite number", report_id)
        return {"numbers": content}
    if kind == "string_list":
        return {"strings": content}
    try:
        return {"cidrs": [str(ipaddress.ip_address(ip.strip())) for ip in content]}
    except ValueError as error:
        raise malformed(f"custom metric {name}: {error}", report_id) from None


def _ports_datapoints(block: Any, ports_metric: str, count_metric: str, out: dict[str, Any]) -> None:
    if block is None:
        return
    if block.ports is not None:
        out[ports_metric] = {"ports": sorted({p.port for p in block.ports if p.port is not None})}
    # `total` when the agent sends it (the Device Client's UDP total counts sockets it lists
    # under TCP, reference §4.6), else the number of listed ports.
    total = block.total if block.total is not None else (len(block.ports) if block.ports is not None else None)
    if total is not None:
        out[count_metric] = {"count": total}


def parse_report(payload: bytes, encoding: str, custom_metric_types: Mapping[str, str]) -> ParsedReport:
    """Decode, validate and flatten a report into datapoints, or raise ReportRejected."""
    if len(payload) > MAX_REPORT_BYTES:
        raise ReportRejected(RejectCode.PAYLOAD_TOO_LARGE,
                             f"Report is {len(payload)} bytes; the maximum is {MAX_REPORT_BYTES}")
    report = _decode(payload, encoding)
    rid = report.header.report_id
    if report.metrics is None and report.custom_metrics is None:
        raise malformed("a report needs a metrics or a custom_metrics block", rid)
    points: dict[str, dict[str, Any]] = {}
    metrics = report.metrics
    if metrics is not None:
        _ports_datapoints(metrics.listening_tcp_ports, "aws:listening-tcp-ports", "aws:num-listening-tcp-ports", points)
        _ports_datapoints(metrics.listening_udp_ports, "aws:listening-udp-ports", "aws:num-listening-udp-ports", points)
        stats = metrics.network_stats
        if stats is not None:
            if stats.bytes_in is not None:
                points["aws:all-bytes-in"] = {"count": stats.bytes_in}
            if stats.bytes_out is not None:
                points["aws:all-bytes-out"] = {"count": stats.bytes_out}
            if stats.packets_in is not None:
                points["aws:all-packets-in"] = {"count": stats.packets_in}
            if stats.packets_out is not None:
                points["aws:all-packets-out"] = {"count": stats.packets_out}
        established = metrics.tcp_connections.established_connections if metrics.tcp_connections else None
        if established is not None:
            if established.connections is not None:
                try:
                    ips = sorted({_ip_of(c.remote_addr) for c in established.connections})
                except ValueError as error:
                    raise malformed(f"remote_addr is not ip:port ({error})", rid) from None
                points["aws:destination-ip-addresses"] = {"cidrs": ips}
            total = established.total if established.total is not None else (
                len(established.connections) if established.connections is not None else None)
            if total is not None:
                points["aws:num-established-tcp-connections"] = {"count": total}
    for name, raw in (report.custom_metrics or {}).items():
        points[name] = _custom_datapoint(name, raw, custom_metric_types.get(name), rid)
    return ParsedReport(rid, report.header.version, points)


def report_id_hint(payload: bytes, encoding: str) -> int | None:
    """Best-effort report id of a rejected report, so the reply can echo it."""
    try:
        document = msgspec.json.decode(payload) if encoding == "json" else cbor_document(payload)
    except Exception:
        return None
    return _report_id_of(document)
