"""Broker events -> per-client, per-window accumulators -> cloud-side datapoints (pure, no I/O).

Per-message cost is a few dictionary updates: messages are counted per (client, window, topic)
with the largest and smallest size, never kept one by one, as stack-measurements recommends for
fleet scale. When a window closes, every monitored device gets a datapoint for every cloud-side
metric, 0 when it was idle (AWS reports count 0 for a monitored device with no events, reference
§3.3) — except the message size, which a window without messages does not have.

Metric definitions (reference §3.3, choices where AWS is silent marked *):
- num-connection-attempts: CONNECTs, successful or not;
- num-disconnects: disconnections;
- num-authorization-failures: refused requests: a refused CONNECT* (of a device already monitored:
  ``Aggregator.connect_attempt``), a PUBLISH or SUBSCRIBE outside the ACL;
- num-messages-sent / -received: PUBLISHes from the device / deliveries to it;
- message-byte-size: AWS: "The number of bytes in a message. Use this metric to specify the maximum
  or minimum size (in bytes) of each message transmitted from a device to AWS IoT"
  (https://docs.aws.amazon.com/iot-device-defender/latest/devguide/detect-cloud-side-metrics.html).
  AWS judges messages, so a window gives the largest payload the device published in it (the
  metric's series: "at most" behaviors, ML Detect) and the smallest (``smallest_series``: "at
  least" behaviors)*; a window in which it published nothing has no message to judge: no
  datapoint of either (a 0 would read as an empty message and alarm "at least" behaviors)*;
- source-ip-address: the addresses the device was connected from in the window: those it connected
  from in it, and that of a connection open since before (refused CONNECTs not: see
  ``Aggregator.connect_attempt``). AWS: "Use this metric to specify a set of allowed ... or denied
  ... CIDRs from which each device must or must not connect" (the page above). A window the device
  spent away has no datapoint of it*: an empty list satisfies any allowed set, so before, a device
  connected from a denied address was "cleared" by the next window while still connected from
  there;
- disconnect-duration: minutes since the device disconnected, while it is disconnected*, else 0.
A window the device spent wholly away (disconnected, no CONNECT) also says so (``AWAY_SERIES``), for
ML Detect, which neither learns nor judges it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import msgspec
from typing import Any

from iotdefender.cloud.topic_filter import counted
from iotdefender.metrics_catalog import AWAY_SERIES, COUNT_MAX, series_key, smallest_series

CLOUD_METRICS = ("aws:num-connection-attempts", "aws:num-disconnects", "aws:num-authorization-failures",
                 "aws:num-messages-sent", "aws:num-messages-received", "aws:message-byte-size",
                 "aws:source-ip-address", "aws:disconnect-duration")
SIZE_METRIC = "aws:message-byte-size"


class ClientWindow(msgspec.Struct, gc=False, omit_defaults=True):
    """One device's events in one window.

    One of these lives per connected device per window, so at fleet size they were most of what
    the service's garbage collector traversed (15,000 devices: about 90,000 of its 180,000
    tracked objects, full collections of 45-100 ms): the struct is untracked (``gc=False``), and
    every field is an int or a dict holding only strings, ``None`` and ints, which CPython leaves
    untracked too. Hence three dicts for the messages sent instead of ``[count, max, min]`` lists,
    and a dict for the source addresses (sets are always tracked; the values are unused).

    Encoded without its idle fields (``omit_defaults``): in cluster mode every device's part of a
    window crosses its detect node's NATS connection at the window's end, ahead of the reports
    published meanwhile, and every field's name made a device that only sent messages 211 bytes
    instead of 90 (bench/README.md, "What the reports wait for at a window's end"). Compatible both
    ways: a missing field decodes as its default, and a node of the release before, which encodes
    every field, is read as before.
    """

    connection_attempts: int = 0
    disconnects: int = 0
    auth_failures: dict[str | None, int] = {}  # topic (None: CONNECT) -> count
    sent: dict[str | None, int] = {}  # topic (None: unknown) -> messages
    sent_max_bytes: dict[str | None, int] = {}  # topic -> the largest payload
    # topic -> the smallest payload. Parts travel as msgpack maps (cluster mode): one encoded by a
    # node of the release before this field decodes with it empty, its topics' smallest unknown,
    # and ``smallest_of`` takes their largest, the one size known; an older node ignores it.
    sent_min_bytes: dict[str | None, int] = {}
    received: dict[str | None, int] = {}
    source_ips: dict[str, None] = {}  # an insertion-ordered set
    # When the device last connected successfully / disconnected in the window (0: not in it).
    # Cluster mode merges one device's windows from several broker nodes: the later of the two
    # says whether it ended the window disconnected (aws:disconnect-duration).
    last_connect_ok: float = 0.0
    last_disconnect: float = 0.0
    # The address of the device's connection on the node that observed the window, when the window
    # began or since (the last one): what a detect node takes the device to be connected from
    # while it is idle in later windows (cluster mode). Encoded as "ip": it is in most parts.
    address: str = msgspec.field(default="", name="ip")


def smallest_of(window: ClientWindow, topic: str | None) -> int:
    """The smallest payload sent on ``topic`` in the window (one it has a count of)."""
    size = window.sent_min_bytes.get(topic)
    return window.sent_max_bytes[topic] if size is None else size


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ClientWindow)


def connection_changes(clients: Mapping[str, ClientWindow]) -> dict[str, float | None]:
    """What a window's parts say of each device's connection at its end ({thing: disconnected
    since, or None: connected}); the devices that neither connected nor disconnected in it are
    left out (their state carries on). Kept so that ``aws:disconnect-duration`` outlives the
    process (store/disconnections.py)."""
    return {thing: _ended(part) for thing, part in clients.items() if part.last_disconnect or part.last_connect_ok}


def _ended(part: ClientWindow) -> float | None:
    """For a part with a connection or a disconnection in it: since when its device was
    disconnected at the window's end, None if it was connected (the later of the two)."""
    return part.last_disconnect if part.last_disconnect > part.last_connect_ok else None


def only_refused(window: ClientWindow) -> bool:
    """Whether all the window holds of its client is refused CONNECTs (nothing it did connected)."""
    return (not window.last_connect_ok and not window.disconnects and not window.sent and not window.received
            and not window.source_ips and all(topic is None for topic in window.auth_failures))


def pack(window: ClientWindow) -> bytes:
    """A device's window as bytes, to keep it (cluster parts, a window open at a graceful stop)."""
    return _encoder.encode(window)


def unpack(data: bytes) -> ClientWindow:
    return _decoder.decode(data)


def merge_windows(parts: Iterable[ClientWindow]) -> ClientWindow:
    """One device's window from its parts, observed by several broker nodes: counts add up, the
    largest payload is the largest of the parts, the smallest the smallest of them, the addresses
    are the union."""
    merged = ClientWindow()
    for part in parts:
        merged.connection_attempts += part.connection_attempts
        merged.disconnects += part.disconnects
        for target, source in ((merged.auth_failures, part.auth_failures), (merged.sent, part.sent),
                               (merged.received, part.received)):
            for topic, count in source.items():
                target[topic] = target.get(topic, 0) + count
        for topic, size in part.sent_max_bytes.items():
            if size > merged.sent_max_bytes.get(topic, -1):
                merged.sent_max_bytes[topic] = size
            smallest = smallest_of(part, topic)
            known = merged.sent_min_bytes.get(topic)
            if known is None or smallest < known:
                merged.sent_min_bytes[topic] = smallest
        merged.source_ips.update(part.source_ips)
        if part.address:
            merged.source_ips[part.address] = None
            if not merged.address or part.last_connect_ok >= merged.last_connect_ok:
                merged.address = part.address  # the latest connection's
        merged.last_connect_ok = max(merged.last_connect_ok, part.last_connect_ok)
        merged.last_disconnect = max(merged.last_disconnect, part.last_disconnect)
    return merged


@dataclass(frozen=True)
class DimensionSpec:
    """A TOPIC_FILTER dimension as a behavior uses it."""

    metric: str
    name: str
    operator: str  # IN | NOT_IN
    filters: tuple[str, ...]


@dataclass
class Aggregator:
    window_s: float
    windows: dict[int, dict[str, ClientWindow]] = field(default_factory=dict)
    disconnected_at: dict[str, float] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    # A device's first return in the current window: (disconnected since, None: never seen
    # connected; back at). The windows closed next end before it, and were spent away although
    # ``disconnected_at`` no longer says so by the close (``_disconnected_at_end``).
    returned: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    # The address of each device's open connection, and since when: kept for every connection (a
    # broker node stamps it on its parts: ``ClientWindow.address``). A detect node fills it from
    # the parts (``add_window``).
    connected_from: dict[str, tuple[str, float]] = field(default_factory=dict)
    # A device's first departure in the current window: (the address, connected since, left at),
    # as ``returned``: a window that ended before it, closed after, had it connected.
    left: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    last_closed: int | None = None
    max_catch_up: int = 12  # after a long pause, older empty windows are not replayed one by one
    # Whether the devices seen and their disconnections are kept: what closes the windows reads
    # them (every monitored device gets a datapoint; the disconnect duration); a cluster's broker
    # node only hands its windows on, and kept every client id that ever connected to it.
    keeps_devices: bool = True
    # The things registered when the last window closed (``CloudService.monitored``): a refused
    # CONNECT of one of them counts although it never connected.
    known: AbstractSet[str] = frozenset()
    # Refused CONNECTs of client ids that are no device known here (neither seen nor registered) are
    # kept for at most this many ids a window: what they count is given at the window's close to the
    # one that turns out registered. Anyone who reaches the port can make them, and each id held a
    # window's entry until the close: 4,000 refused CONNECTs a second, each with its own id, made
    # ~1.2 M entries a 5-minute window (an outside-in test).
    max_unknown_refused: int = 100_000
    unknown_refused: dict[int, int] = field(default_factory=dict)  # per window: how many such ids are kept
    # A minute of ``aws:disconnect-duration``, divided by --time-scale as every time constant (at
    # scale 60 a device away for 10 s is away 10 "minutes"; real minutes before: never in a test).
    minute_s: float = 60.0

    def index(self, at: float) -> int:
        return int(at // self.window_s)

    def _client(self, client_id: str, at: float, seen: bool = True) -> ClientWindow:
        """The client's window at ``at``; ``seen``: the event makes it a monitored device."""
        if self.keeps_devices and seen:
            self.seen.add(client_id)
        by_client = self.windows.setdefault(self.index(at), {})
        window = by_client.get(client_id)
        if window is None:
            window = by_client[client_id] = ClientWindow()
            connection = self.connected_from.get(client_id)
            if connection is not None:
                window.address = connection[0]
        return window

    # -- events -------------------------------------------------------------------------------
    def connect_attempt(self, client_id: str, address: str | None, ok: bool, at: float) -> bool:
        """A CONNECT claiming ``client_id``. A refused one counts for that device (an attempt and an
        authorization failure) only if it is a device already (registered, or seen connected): it
        makes no device of its own, and its address is not one the device connected from. Before,
        anyone who could reach the port could create a monitored device per refused CONNECT (20,000
        in 5 s: datapoints for each every window, and a violation storm) and put addresses in a
        registered device's ``aws:source-ip-address`` without its credentials (an outside-in test).
        AWS: "The IP address from which a device has connected"; "Successful and unsuccessful
        attempts are counted" (reference §3.3). Returns False for one not kept (``max_unknown_refused``)."""
        if not ok and client_id not in self.seen and client_id not in self.known and not self._room_for(client_id, at):
            return False
        if ok and self.keeps_devices:
            self._note_return(client_id, at)
        window = self._client(client_id, at, seen=ok)
        window.connection_attempts += 1
        if ok:
            if address:
                window.source_ips[address] = None
                window.address = address
            self.connected_from[client_id] = (address or "", at)
            self.disconnected_at.pop(client_id, None)
            window.last_connect_ok = at
        else:
            window.auth_failures[None] = window.auth_failures.get(None, 0) + 1
        return True

    def _note_return(self, client_id: str, at: float) -> None:
        """Keeps when a device away (or never seen) came back, if it is its first return in this
        window: a window that ended before it closes after it (the close's grace, or a late close)."""
        since = self.disconnected_at.get(client_id)
        if since is None and client_id in self.seen:
            return  # connected already (a second session taking over the client id)
        earlier = self.returned.get(client_id)
        if earlier is None or self.index(earlier[1]) != self.index(at):
            self.returned[client_id] = (since, at)

    def _room_for(self, client_id: str, at: float) -> bool:
        """Whether a refused CONNECT of an unknown ``client_id`` at ``at`` may be kept."""
        index = self.index(at)
        if client_id in self.windows.get(index, {}):
            return True
        kept = self.unknown_refused.get(index, 0)
        if kept >= self.max_unknown_refused:
            return False
        self.unknown_refused[index] = kept + 1
        return True

    def authorization_failure(self, client_id: str, topic: str | None, at: float) -> None:
        window = self._client(client_id, at)
        window.auth_failures[topic] = window.auth_failures.get(topic, 0) + 1

    def disconnect(self, client_id: str, at: float) -> None:
        window = self._client(client_id, at)
        window.disconnects += 1
        window.last_disconnect = at
        connection = self.connected_from.pop(client_id, None)
        if self.keeps_devices:
            self.disconnected_at[client_id] = at
            earlier = self.left.get(client_id)
            if connection is not None and (earlier is None or self.index(earlier[2]) != self.index(at)):
                self.left[client_id] = (*connection, at)

    def connection_open(self, client_id: str, address: str | None, at: float) -> None:
        """A connection found open that no event announced: a reader of the broker's counters
        (NATS ``/connz``) started while it was open, after a restart or a takeover. The device is
        connected, from ``address``, and counts no attempt (it may have connected long before).
        Before, it counted as never seen until its next event: no ``aws:source-ip-address``, and
        its idle windows taken for absence (on one box), as a device's that never connected."""
        if client_id in self.connected_from:
            return
        if self.keeps_devices:
            self._note_return(client_id, at)  # away when the last window closed: it came back meanwhile
            self.seen.add(client_id)
            self.disconnected_at.pop(client_id, None)
        self.connected_from[client_id] = (address or "", at)

    def connections_lost(self, at: float) -> None:
        """The broker died: every connection it had ended, and it could tell of none (Mosquitto
        restarted by its supervisor). Each counts as the device's disconnection, as it is one;
        before, the devices that did not come back counted as connected from then on (no
        ``aws:disconnect-duration``, no away windows, their last address kept)."""
        for client_id in list(self.connected_from):
            self.disconnect(client_id, at)

    def add_window(self, window: int, client_id: str, part: ClientWindow) -> None:
        """A window of this device observed elsewhere (cluster mode: merged from the broker nodes'
        parts), with what it says of the device's connection at the window's end. A part of
        refused CONNECTs only makes no device (``connect_attempt``)."""
        if not only_refused(part):
            self.seen.add(client_id)
        self.windows.setdefault(window, {})[client_id] = part
        if part.last_disconnect or part.last_connect_ok:
            self.connection_ended(client_id, _ended(part))
        if part.address and client_id not in self.disconnected_at:  # connected at the window's end
            self.connected_from[client_id] = (part.address, part.last_connect_ok or window * self.window_s)

    def connection_ended(self, client_id: str, since: float | None) -> None:
        """What a window said of a device's connection at its end: disconnected since ``since``,
        or connected (None)."""
        if since is None:
            self.disconnected_at.pop(client_id, None)
        else:
            self.disconnected_at[client_id] = since
            self.connected_from.pop(client_id, None)

    def restore(self, window: int, client_id: str, part: ClientWindow) -> None:
        """A window kept at a graceful stop, back where it was: added to anything the window holds
        already, as a part observed elsewhere is."""
        held = self.windows.get(window, {}).get(client_id)
        self.add_window(window, client_id, part if held is None else merge_windows((held, part)))

    def open_windows(self) -> dict[int, dict[str, ClientWindow]]:
        """Every window not closed yet (the current one, and one that ended and awaits closing)."""
        return {window: dict(clients) for window, clients in self.windows.items() if clients}

    def message_sent(self, client_id: str, topic: str, size: int, at: float) -> None:
        self._sent(self._client(client_id, at), topic, 1, size)

    def message_counts(self, client_id: str, sent: int, sent_bytes: int, received: int, at: float) -> None:
        """Counts without topics (a broker that reports counters, like NATS): they count in no
        topic dimension, and the size is the average of the messages counted together."""
        window = self._client(client_id, at)
        if sent:
            self._sent(window, None, sent, sent_bytes // sent)
        if received:
            window.received[None] = window.received.get(None, 0) + received

    @staticmethod
    def _sent(window: ClientWindow, topic: str | None, count: int, size: int) -> None:
        sent = window.sent.get(topic)
        if sent is None:  # the first on the topic: the largest and the smallest
            window.sent[topic] = count
            window.sent_max_bytes[topic] = window.sent_min_bytes[topic] = size
            return
        window.sent[topic] = sent + count
        if size > window.sent_max_bytes.get(topic, -1):
            window.sent_max_bytes[topic] = size
        elif size < window.sent_min_bytes.get(topic, COUNT_MAX):  # (never above the largest)
            window.sent_min_bytes[topic] = size

    def message_received(self, client_id: str, topic: str, at: float) -> None:
        received = self._client(client_id, at).received
        received[topic] = received.get(topic, 0) + 1

    # -- windows --------------------------------------------------------------------------------
    def closed_windows(self, now: float) -> list[int]:
        """Every window of the grid that ended before ``now`` and was not closed yet, oldest first,
        with or without events: an idle window is what gives idle devices their 0 datapoints."""
        current = self.index(now)
        if self.last_closed is None:  # first call: only windows that saw events, never unobserved ones
            first = min((w for w in self.windows if w < current), default=current)
        else:
            first = self.last_closed + 1
        first = max(first, current - self.max_catch_up)
        closed_until = first * self.window_s  # windows ending by then are closed: their returns no longer matter
        for back in [c for c, (_, at) in self.returned.items() if at < closed_until]:
            del self.returned[back]
        for gone in [c for c, (_, _, at) in self.left.items() if at < closed_until]:
            del self.left[gone]
        for stale in [w for w in self.windows if w < first]:
            del self.windows[stale]
        for past in [w for w in self.unknown_refused if w < current]:
            del self.unknown_refused[past]
        self.last_closed = current - 1
        return list(range(first, current))

    def take(self, window: int) -> dict[str, ClientWindow]:
        return self.windows.pop(window, {})

    def datapoints(self, client_id: str, window: ClientWindow | None, end: float,
                   dimensions: Iterable[DimensionSpec] = ()) -> dict[str, dict[str, Any]]:
        """Every cloud-side series of one device for one window ending at ``end`` (0 when idle;
        no message size when it sent no message)."""
        w = window or ClientWindow()
        away, since = self._disconnected_at_end(client_id, end)
        points: dict[str, dict[str, Any]] = {
            "aws:num-connection-attempts": {"count": w.connection_attempts},
            "aws:num-disconnects": {"count": w.disconnects},
            "aws:num-authorization-failures": {"count": sum(w.auth_failures.values())},
            "aws:num-messages-sent": {"count": sum(w.sent.values())},
            "aws:num-messages-received": {"count": sum(w.received.values())},
            "aws:disconnect-duration": {"count": int((end - since) // self.minute_s) if away and since is not None else 0},
        }
        _sizes(points, SIZE_METRIC, w, list(w.sent_max_bytes))
        addresses = self._addresses(client_id, w, end)
        if addresses:
            points["aws:source-ip-address"] = {"cidrs": addresses}
        if away and (since is None or since <= end - self.window_s) and not _has_events(w):
            points[AWAY_SERIES] = {"count": 1}
        for spec in dimensions:
            key = series_key(spec.metric, spec.name, spec.operator)
            keep = lambda topic: counted(topic, spec.filters, spec.operator, client_id)  # noqa: E731
            if spec.metric == "aws:num-authorization-failures":
                points[key] = {"count": sum(n for t, n in w.auth_failures.items() if keep(t))}
            elif spec.metric == "aws:num-messages-sent":
                points[key] = {"count": sum(c for t, c in w.sent.items() if keep(t))}
            elif spec.metric == "aws:num-messages-received":
                points[key] = {"count": sum(c for t, c in w.received.items() if keep(t))}
            elif spec.metric == SIZE_METRIC:
                _sizes(points, key, w, [t for t in w.sent_max_bytes if keep(t)])
            elif spec.metric == "aws:source-ip-address":
                # Addresses of connections that published on matching topics: the broker knows
                # one address per connection, so a matching message keeps the window's addresses;
                # none, no datapoint (as a window spent away).
                if addresses and any(keep(t) for t in w.sent):
                    points[key] = {"cidrs": addresses}
        return points


    def _addresses(self, client_id: str, window: ClientWindow, end: float) -> list[str]:
        """The addresses the device was connected from in the window ending at ``end``: those it
        connected from in it, and that of the connection open at its end (read as
        ``_disconnected_at_end`` reads the state: a departure after the end is undone)."""
        found = dict(window.source_ips)
        if window.address:
            found[window.address] = None
        connection = self.connected_from.get(client_id)
        if connection is not None and connection[1] < end:
            found[connection[0]] = None
        else:
            departure = self.left.get(client_id)
            if departure is not None and departure[1] < end <= departure[2]:
                found[departure[0]] = None
        found.pop("", None)  # a connection whose address the broker did not say
        return sorted(found)

    def _disconnected_at_end(self, client_id: str, end: float) -> tuple[bool, float | None]:
        """Whether the device was disconnected at ``end`` (a window's end), and since when (None:
        never seen connected since this process started, as a registered thing not deployed yet).

        Read from the state at the close, which comes after the end: a device that came back in
        between (``returned``) was still away at the end, and one that disconnected in between
        (``disconnected_at`` after the end) was still connected. Before, the first had its window
        counted as connected and the second got a disconnect duration of -1."""
        back = self.returned.get(client_id)
        if back is not None and back[1] >= end and (back[0] is None or back[0] <= end):
            return True, back[0]
        since = self.disconnected_at.get(client_id)
        if since is not None:
            return (True, since) if since <= end else (False, None)
        return client_id not in self.seen, None


def _has_events(window: ClientWindow) -> bool:
    """Whether the device did anything in the window. One that did not, and was disconnected
    throughout (since before it, or never seen connected), spent the window away: its 0s are
    absence, not behaviour (``metrics_catalog.AWAY_SERIES``). AWS counts ML Detect's minimum of
    datapoints in devices "connecting and having activity" (60 devices every 45 minutes, 7 every
    5: https://docs.aws.amazon.com/iot-device-defender/latest/devguide/dd-detect-ml.html). A
    device still connected to an external broker across a restart of this process, or to a
    broker node across a cluster's takeover, counts as never seen until its next event (except on
    a NATS broker, whose open connections are read at the start: ``connection_open``)."""
    return bool(window.connection_attempts or window.disconnects or window.sent or window.received
                or window.auth_failures)


def _sizes(points: dict[str, dict[str, Any]], series: str, window: ClientWindow, topics: list[str | None]) -> None:
    """The largest and smallest message on ``topics`` in the series and its companion; nothing
    when there is none (docs/cloud-metrics.md)."""
    if topics:
        points[series] = {"count": max(window.sent_max_bytes[t] for t in topics)}
        points[smallest_series(series)] = {"count": min(smallest_of(window, t) for t in topics)}


def dimension_specs(profiles: Iterable[Mapping[str, Any]], dimensions: Mapping[str, list[str]]) -> list[DimensionSpec]:
    """The dimensioned cloud-side series that a thing's profiles evaluate or retain."""
    specs = set()
    for profile in profiles:
        items = list(profile.get("behaviors") or []) + list(profile.get("additional_metrics_to_retain_v2") or [])
        for item in items:
            dimension = item.get("metricDimension")
            if dimension and item.get("metric") in CLOUD_METRICS and dimension.get("dimensionName") in dimensions:
                name = dimension["dimensionName"]
                specs.add(DimensionSpec(item["metric"], name, dimension.get("operator") or "IN",
                                        tuple(dimensions[name])))
    return sorted(specs, key=lambda s: (s.metric, s.name, s.operator))
