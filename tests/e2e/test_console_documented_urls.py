"""Every console address written in docs/ and the README is one the console serves.

A user who followed docs/console.md to the device page got a 404 (the page is
``/console/things/NAME``); this test reads the documents, substitutes real resources for the
placeholders (NAME, ID) and requests each address with a logged-in session.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ACCESS_KEY, SECRET_KEY, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A /console address as the documents write it: not part of a file name (docs/console.md) and not
# the tail of a full URL (http://HOST:PORT/console/, whose path is the same as /console/).
ADDRESS = re.compile(r"(?<![\w.:/])/console(?![\w.])[^\s`)\"'<>,;|]*")
POST_ONLY = {"/console/api/builder/validate", "/console/api/builder/preview", "/console/api/backtests"}
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|\{\w+\})$")


def documented() -> dict[str, list[str]]:
    """Each documented address and where it is written."""
    found: dict[str, list[str]] = {}
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), 1):
            for address in ADDRESS.findall(line):
                found.setdefault(address.rstrip(".:"), []).append(f"{document.name}:{number}")
    return found


@pytest.fixture(scope="module")
def console():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=["--report-min-interval", "0"])
    svc.start()
    try:
        iot = svc.client()
        iot.create_security_profile(securityProfileName="docs-profile")
        iot.create_thing(thingName="docs-thing")
        iot.create_thing_group(thingGroupName="docs-group")
        iot.create_mitigation_action(actionName="docs-action", roleArn="arn:aws:iam::123456789012:role/docs",
                                     actionParams={"addThingsToThingGroupParams": {"thingGroupNames": ["docs-group"]}})
        iot.start_detect_mitigation_actions_task(taskId="docs-task", target={"securityProfileName": "docs-profile"},
                                                 actions=["docs-action"])
        client = httpx.Client(base_url=svc.endpoint, follow_redirects=False, timeout=30)
        assert client.post("/console/login", data={"access_key_id": ACCESS_KEY,
                                                   "secret_access_key": SECRET_KEY}).status_code == 303
        yield client
    finally:
        svc.stop()


def concrete(address: str) -> str:
    """The address with a real resource for each placeholder, named by the segment before it."""
    examples = {"things": "docs-thing", "profiles": "docs-profile", "thing-groups": "docs-group",
                "violations": str(uuid.uuid4()), "tasks": "docs-task"}
    segments = address.split("/")
    for i, segment in enumerate(segments):
        if PLACEHOLDER.match(segment.split("?")[0]):
            assert segments[i - 1] in examples, f"no example for {segment} in {address}"
            segments[i] = examples[segments[i - 1]]
    return "/".join(segments)


def test_the_documents_name_the_console_pages():
    addresses = documented()
    assert "/console/things/NAME" in addresses and "/console/profiles/NAME/detail" in addresses
    assert len(addresses) >= 15


def test_every_documented_console_address_is_served(console):
    for address, where in documented().items():
        path = concrete(address)
        if address == "/console/api/events":  # a stream of events: it answers, and never ends
            with console.stream("GET", path) as stream:
                assert stream.status_code == 200 and "text/event-stream" in stream.headers["content-type"]
            continue
        answer = console.get(path)
        if address in POST_ONLY:
            assert answer.status_code == 405, (address, where)  # the route exists, for POST
        elif address.endswith("/evidence"):
            # A violation that does not exist: the page's own AWS-shaped refusal, not the router's 404.
            assert answer.status_code == 404 and "ResourceNotFoundException" in answer.text, (address, where)
        elif "%00" in address:
            assert answer.status_code == 400, (address, where)  # as docs/api-hardening.md says
        elif address == "/console":
            assert answer.status_code in (301, 302, 303, 307, 308), (address, where)
        else:
            assert answer.status_code == 200, (address, where, answer.status_code)
