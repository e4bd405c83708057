"""Who a device is, what it may publish and subscribe to, and every refusal counted per client.

Broker adapters ask the gatekeeper; it holds no transport code, so the embedded broker and any
future adapter apply the same policy. The default ACL mirrors the usual AWS IoT policy: a client
may publish reports and read replies only under its own thing name
(``$aws/things/${iot:ClientId}/defender/metrics/...``). ``acl="any"`` lets a client report for
other things, which AWS allows when a policy grants it ("Thing-1 publishes on
$aws/things/Thing-2/..." — reference §4.1).
"""

from __future__ import annotations

import hmac
import re
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter as PromCounter

REPORT_TOPIC = re.compile(r"^\$aws/things/([^/]+)/defender/metrics/(json|cbor)$")
REPLY_FILTER = re.compile(r"^\$aws/things/([^/#]+)/defender/metrics/(json|cbor|\+)(/(accepted|rejected|\+))?$")

MQTT_DENIALS = PromCounter("iotdefender_mqtt_denials", "MQTT requests refused by the gatekeeper", ["reason"])


@dataclass(frozen=True)
class Identity:
    """The authenticated device: its thing name / client id."""

    name: str


class PasswordBook:
    """``username:secret`` lines; a secret starting with ``$argon2`` is an Argon2 hash (pwdlib)."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self._entries = dict(entries)
        self._hasher = None
        if any(v.startswith("$argon2") for v in self._entries.values()):
            from pwdlib import PasswordHash

            self._hasher = PasswordHash.recommended()

    @classmethod
    def from_file(cls, path: Path) -> PasswordBook:
        entries = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, secret = line.partition(":")
            if not sep or not user:
                raise ValueError(f"{path}:{number}: expected username:password")
            entries[user.strip()] = secret.strip()
        return cls(entries)

    def check(self, username: str | None, password: str | bytes | None) -> bool:
        if username is None or password is None or username not in self._entries:
            return False
        given = password.decode() if isinstance(password, bytes) else password
        stored = self._entries[username]
        if stored.startswith("$argon2") and self._hasher is not None:
            return self._hasher.verify(given, stored)
        return hmac.compare_digest(stored.encode(), given.encode())


def certificate_identity(ssl_object: ssl.SSLObject | None) -> str | None:
    """The subject common name of a verified client certificate."""
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert()
    for rdn in (certificate or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


@dataclass
class Gatekeeper:
    auth: str = "none"  # none | password | cert
    acl: str = "own"  # own | any
    passwords: PasswordBook | None = None
    denials: Counter[tuple[str, str]] = field(default_factory=Counter)
    observer: Any = None  # cloud-side metrics: told of every refused PUBLISH or SUBSCRIBE

    def record_denial(self, client_id: str | None, reason: str, topic: str | None = None) -> None:
        """Count a refusal by reason; a refused PUBLISH or SUBSCRIBE (with its topic) is also an
        authorization failure for the cloud-side metrics."""
        self.denials[(client_id or "", reason)] += 1
        MQTT_DENIALS.labels(reason).inc()
        if topic is not None and self.observer is not None:
            self.observer.authorization_failure(client_id, topic)

    def authenticate(self, client_id: str | None, username: str | None, password: str | bytes | None,
                     ssl_object: ssl.SSLObject | None) -> Identity | None:
        """The device's identity, or None (CONNACK refused). The client id must be the identity.

        Binding the client id to the credential keeps one device from connecting, and from
        taking over a session, under another device's client id.
        """
        if not client_id:
            self.record_denial(client_id, "auth_no_client_id")
            return None
        if self.auth == "none":
            return Identity(client_id)
        if self.auth == "password":
            if self.passwords is None or not self.passwords.check(username, password):
                self.record_denial(client_id, "auth_bad_password")
                return None
            name = username
        else:
            name = certificate_identity(ssl_object)
            if name is None:
                self.record_denial(client_id, "auth_no_certificate")
                return None
        if name != client_id:
            self.record_denial(client_id, "auth_client_id_mismatch")
            return None
        return Identity(client_id)

    def may_publish(self, identity: Identity | None, topic: str) -> bool:
        """Reserved ``$`` topics: only Device Defender reports, under the ACL. Others: allowed."""
        if not topic.startswith("$"):
            return identity is not None
        match = REPORT_TOPIC.match(topic)
        allowed = identity is not None and match is not None and (self.acl == "any" or match.group(1) == identity.name)
        if not allowed:
            self.record_denial(identity.name if identity else None, "publish_denied", topic)
        return allowed

    def may_subscribe(self, identity: Identity | None, topic_filter: str) -> bool:
        if not topic_filter.startswith("$"):
            return identity is not None
        match = REPLY_FILTER.match(topic_filter)
        allowed = identity is not None and match is not None and (self.acl == "any" or match.group(1) == identity.name)
        if not allowed:
            self.record_denial(identity.name if identity else None, "subscribe_denied", topic_filter)
        return allowed

    def denials_of(self, client_id: str) -> dict[str, int]:
        return {reason: n for (cid, reason), n in self.denials.items() if cid == client_id}
