"""The service's MQTT writes of one loop iteration leave as one send, in order, and none is lost."""

import asyncio

from iotdefender.brokers.coalescing import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def test_writes_of_one_iteration_are_joined_in_order() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner)  # type: ignore[arg-type]
        for packet in (b"a", b"bc", b"d"):
            transport.write(packet)
        assert inner.writes == []  # nothing sent before the iteration ends
        await asyncio.sleep(0)
        transport.write(b"e")
        await asyncio.sleep(0)
        return inner

    assert asyncio.run(scenario()).writes == [b"abcd", b"e"]


def test_close_sends_what_is_pending_first_and_other_calls_pass_through() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner)  # type: ignore[arg-type]
        assert transport.get_extra_info("peername") == "extra:peername"
        transport.write(b"DISCONNECT")
        transport.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        return inner

    inner = asyncio.run(scenario())
    assert inner.writes == [b"DISCONNECT"] and inner.closed
