"""Is a datapoint compliant with a behavior's criteria?

Behaviors describe NORMAL behavior (reference §5.1): a datapoint is compliant iff
``observed <operator> threshold`` holds, and violates otherwise. Set operators apply element-wise:
``in-*-set`` is compliant iff every observed element is in the set, ``not-in-*-set`` iff none is;
an empty observed list is always compliant ("An empty list of ports or IP addresses is always
considered in conformity", reference §4.5).
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from iotdefender.metrics_catalog import COUNT_MAX

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "less-than": lambda a, b: a < b,
    "less-than-equals": lambda a, b: a <= b,
    "greater-than": lambda a, b: a > b,
    "greater-than-equals": lambda a, b: a >= b,
}


def scalar_of(value: Mapping[str, Any]) -> float | None:
    """The number of a ``count`` or ``number`` MetricValue."""
    number = value.get("count")
    if number is None:
        number = value.get("number")
        if number is None:
            return None
    return float(number)



def statistical_threshold(operator: str, measured: Mapping[str, Any], percentile: float) -> dict[str, Any]:
    """A fleet percentile as the MetricValue a datapoint like ``measured`` is compared with.

    A count's threshold is a count (``MetricValue.count`` is a Long in AWS's model, and evidence,
    alerts and the console write it in the metric's units: "18 ports", not "18.2" or "18.0"): the
    whole number that gives every whole count the verdict the percentile gives it. ``n <= 18.2``
    holds exactly when ``n <= 18``, ``n < 18.2`` exactly when ``n < 19``. A ``number`` stays as
    computed.
    """
    if measured.get("count") is None or not math.isfinite(percentile):
        return {"number": percentile}
    whole = math.floor(percentile) if operator in ("less-than-equals", "greater-than") else math.ceil(percentile)
    return {"count": max(0, min(whole, COUNT_MAX))}


@functools.lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.strip())


def _in_networks(address: str, networks: Iterable[Network]) -> bool:
    ip = _address(address)
    return any(ip.version == net.version and ip in net for net in networks)


_ELEMENT_KEYS = ("ports", "cidrs", "numbers", "strings")


def _element_values(value: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The list a MetricValue holds, as it is (the compiled checks read it without a copy)."""
    for key in _ELEMENT_KEYS:
        got = value.get(key)
        if got is not None:
            return key, got
    return None


def _elements(value: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    found = _element_values(value)
    return None if found is None else (found[0], list(found[1]))


def compliant(operator: str, threshold: Mapping[str, Any], observed: Mapping[str, Any]) -> bool:
    """True when ``observed`` satisfies the criteria; raises ValueError when they cannot compare."""
    if operator in _NUMERIC:
        left, right = scalar_of(observed), scalar_of(threshold)
        if left is None or right is None or math.isnan(left) or math.isnan(right):
            raise ValueError(f"{operator} needs numeric values, got {dict(observed)} and {dict(threshold)}")
        return _NUMERIC[operator](left, right)
    got = _elements(observed)
    allowed = _elements(threshold)
    if got is None or allowed is None:
        raise ValueError(f"{operator} needs list values, got {dict(observed)} and {dict(threshold)}")
    elements = got[1]
    if not elements:
        return True
    if operator in ("in-cidr-set", "not-in-cidr-set"):
        networks = _networks(tuple(allowed[1]))
        inside = [_in_networks(e, networks) for e in elements]
    elif operator in ("in-port-set", "not-in-port-set", "in-set", "not-in-set"):
        members = set(allowed[1])
        inside = [e in members for e in elements]
    else:
        raise ValueError(f"unknown comparison operator {operator}")
    return all(inside) if operator.startswith("in-") else not any(inside)


def offending(operator: str, threshold: Mapping[str, Any], observed: Mapping[str, Any]) -> list[Any]:
    """The observed elements that break a set criterion (the evidence of a violation)."""
    got, allowed = _elements(observed), _elements(threshold)
    if got is None or allowed is None:
        return []
    test: Callable[[Any], bool]
    if operator in ("in-cidr-set", "not-in-cidr-set"):
        networks = _networks(tuple(allowed[1]))
        test = lambda e: _in_networks(e, networks)  # noqa: E731
    else:
        members = set(allowed[1])
        test = lambda e: e in members  # noqa: E731
    want_inside = operator.startswith("in-")
    return [e for e in got[1] if test(e) != want_inside]


Check = Callable[[Mapping[str, Any]], bool]
_MEMO_MAX = 65536


def compile_check(operator: str, threshold: Mapping[str, Any]) -> Check:
    """``compliant`` with the threshold's side prepared once (number, member set, networks).

    Live evaluation compares the same fixed threshold with every datapoint of a fleet; building the
    port set or parsing the CIDRs per datapoint was most of the comparison's cost. The returned
    function answers exactly as ``compliant(operator, threshold, observed)`` would, raising the
    same ValueError for values that cannot compare.
    """
    if operator in _NUMERIC:
        right = scalar_of(threshold)
        test = _NUMERIC[operator]
        if right is None or math.isnan(right):
            return lambda observed: compliant(operator, threshold, observed)

        def numeric(observed: Mapping[str, Any]) -> bool:
            left = scalar_of(observed)
            if left is None or math.isnan(left):
                return compliant(operator, threshold, observed)  # raises the same ValueError
            return test(left, right)

        return numeric
    allowed = _elements(threshold)
    if allowed is None or operator not in ("in-cidr-set", "not-in-cidr-set", "in-port-set", "not-in-port-set",
                                           "in-set", "not-in-set"):
        return lambda observed: compliant(operator, threshold, observed)
    want_inside = operator.startswith("in-")
    if operator not in ("in-cidr-set", "not-in-cidr-set"):
        members = frozenset(allowed[1])

        def set_membership(observed: Mapping[str, Any]) -> bool:
            found = _element_values(observed)
            if found is None:
                return compliant(operator, threshold, observed)  # raises the same ValueError
            # In C, without a list per datapoint: ports, strings and numbers cannot raise here
            # (an unhashable element raises TypeError either way, as compliant's lookup does).
            return members.issuperset(found[1]) if want_inside else members.isdisjoint(found[1])

        return set_membership

    networks = _networks(tuple(allowed[1]))
    # A fleet talks to the same few addresses: remember each one's answer for this set.
    memo: dict[str, bool] = {}

    def cidr_inside(address: Any) -> bool:
        known = memo.get(address)
        if known is None:
            known = _in_networks(address, networks)  # raises for a bad address, never memoised
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[address] = known
        return known

    def cidr_membership(observed: Mapping[str, Any]) -> bool:
        found = _element_values(observed)
        if found is None:
            return compliant(operator, threshold, observed)  # raises the same ValueError
        known = list(map(memo.get, found[1]))  # in C: every address answered before, the common case
        if None in known:  # every element, as compliant does: a bad address raises
            known = [cidr_inside(e) for e in found[1]]
        return all(known) if want_inside else not any(known)

    return cidr_membership
