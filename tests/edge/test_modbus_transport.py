"""The agent's Modbus TCP master against a deliberately awkward server: a unit that
answers late, and an endpoint where nobody answers."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest

from edge.modbus_pdu import ModbusExceptionResponse, ModbusTimeout, parse_response, read_request
from edge.modbus_transport import RECONNECT_AFTER_TIMEOUTS, TcpMaster, crc16, rtu_frame


class AwkwardServer:
    """Unit 1 answers after `slow_s`; unit 2 at once; unit 3 never; unit 4 with exception 2;
    unit 5 hangs up 50 ms later; unit 6 answers with an MBAP length of 0. A register read
    returns the unit id in every register."""

    def __init__(self, slow_s: float) -> None:
        self.slow_s = slow_s
        self.connections = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await asyncio.sleep(0.05)  # let the handlers see the master hang up
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                _, _, count = struct.unpack(">BHH", pdu[:5])
                if unit == 3:
                    continue
                if unit == 6:
                    writer.write(struct.pack(">HHHB", tid, 0, 0, unit))
                    continue
                if unit == 5:
                    task = asyncio.create_task(self._hang_up(writer))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    continue
                if unit == 4:
                    body = bytes([0x83, 2])
                else:
                    body = bytes([3, 2 * count]) + struct.pack(f">{count}H", *([unit] * count))
                frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                task = asyncio.create_task(self._answer(writer, frame, self.slow_s if unit == 1 else 0.0))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, frame: bytes, delay: float) -> None:
        await asyncio.sleep(delay)  # the slow unit answers while others are served
        if not writer.is_closing():
            writer.write(frame)


    async def _hang_up(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.close()


@contextlib.asynccontextmanager
async def _awkward(slow_s: float) -> AsyncIterator[tuple[AwkwardServer, TcpMaster]]:
    """The awkward server and a master connected to it; both closed afterwards."""
    server = AwkwardServer(slow_s)
    port = await server.start()
    master = TcpMaster("127.0.0.1", port)
    try:
        yield server, master
    finally:
        await master.close()
        await server.stop()


async def _read(master: TcpMaster, unit: int, timeout: float = 0.2) -> list[int]:
    req = read_request(unit, "holding", 0, 3)
    return parse_response(req, await master.transact(req, timeout), 3)


def test_a_late_answer_is_dropped_not_paired_with_the_next_request() -> None:
    async def scenario() -> None:
        server = AwkwardServer(slow_s=0.4)
        port = await server.start()
        master = TcpMaster("127.0.0.1", port)
        with pytest.raises(ModbusTimeout):
            await _read(master, 1)
        assert await _read(master, 2) == [2, 2, 2]  # not unit 1's late [1, 1, 1]
        await asyncio.sleep(0.3)  # the late answer arrives now and is dropped
        assert await _read(master, 2) == [2, 2, 2]
        with pytest.raises(ModbusExceptionResponse) as exc:
            await _read(master, 4)
        assert exc.value.code == 2
        assert server.connections == 1  # one connection for every unit
        await master.close()
        await server.stop()

    asyncio.run(scenario())


def test_connection_is_replaced_only_when_no_unit_answers() -> None:
    async def scenario() -> None:
        server = AwkwardServer(slow_s=0.0)
        port = await server.start()
        master = TcpMaster("127.0.0.1", port)
        for _ in range(RECONNECT_AFTER_TIMEOUTS * 3):  # a silent unit between healthy ones
            with pytest.raises(ModbusTimeout):
                await _read(master, 3, timeout=0.05)
            assert await _read(master, 2) == [2, 2, 2]
        assert server.connections == 1
        for _ in range(RECONNECT_AFTER_TIMEOUTS):  # nobody answers: the connection is suspect
            with pytest.raises(ModbusTimeout):
                await _read(master, 3, timeout=0.05)
        assert await _read(master, 2) == [2, 2, 2]
        assert server.connections == 2
        await master.close()
        await server.stop()

    asyncio.run(scenario())


def test_rtu_frame_crc_matches_the_modbus_spec_example() -> None:
    # Modbus over serial line spec: read 1 holding register at 0x0000 of unit 1 is 01 03 00 00 00 01 84 0A
    frame = rtu_frame(read_request(1, "holding", 0, 1))
    assert frame.hex() == "010300000001840a"
    assert crc16(frame) == 0  # a frame with its CRC appended checks to zero


def test_a_cancel_that_meets_the_answer_is_not_swallowed() -> None:
    """Regression: with asyncio.wait_for (Python 3.11) a cancellation arriving in the same
    loop iteration as the answer was swallowed, the link task went on polling, and the
    agent never stopped. The master must let the CancelledError through."""

    async def scenario() -> None:
        server = AwkwardServer(slow_s=5.0)  # unit 1 answers too late: we answer it ourselves
        port = await server.start()
        master = TcpMaster("127.0.0.1", port)
        assert await _read(master, 2) == [2, 2, 2]  # connected
        task = asyncio.create_task(_read(master, 1, timeout=2.0))
        await asyncio.sleep(0.05)  # the request is out, the master waits for the answer
        proto = master._protocol
        assert proto is not None and len(proto.pending) == 1
        (fut,) = proto.pending.values()
        assert isinstance(fut, asyncio.Future)
        fut.set_result(bytes([1, 3, 6, 0, 7, 0, 7, 0, 7]))  # the answer lands ...
        task.cancel()  # ... in the same iteration as the stop
        with pytest.raises(asyncio.CancelledError):
            await task
        await master.close()
        await server.stop()

    asyncio.run(scenario())


def test_pipelined_reads_answer_in_order_and_a_silent_unit_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """transact_many: answers in request order although unit 1 answers last; a silent
    unit times out once for the whole group, and the futures after it that also expired
    are not left for asyncio to report as 'exception never retrieved'."""
    import gc

    async def scenario() -> None:
        server = AwkwardServer(slow_s=0.05)
        port = await server.start()
        master = TcpMaster("127.0.0.1", port)
        reqs = [read_request(unit, "holding", 0, 2) for unit in (1, 2, 4)]
        answers = await master.transact_many(reqs, 0.5)
        assert parse_response(reqs[0], answers[0], 2) == [1, 1]
        assert parse_response(reqs[1], answers[1], 2) == [2, 2]
        with pytest.raises(ModbusExceptionResponse):
            parse_response(reqs[2], answers[2], 2)
        assert master.requests == 3
        silent = [read_request(unit, "holding", 0, 2) for unit in (3, 3, 3)]
        with pytest.raises(ModbusTimeout):
            await master.transact_many(silent, 0.1)
        await asyncio.sleep(0.05)
        assert master.requests == 6
        assert await _read(master, 2) == [2, 2, 2]  # the link goes on
        await master.close()
        await server.stop()

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_coalesced_exchange_keeps_each_devices_own_deadline() -> None:
    """transact_batches: one write, one completion, but each batch (device) has its own
    time-out. Unit 1 answers after 0.15 s, past its 0.1-s deadline, while the exchange still
    waits for the silent unit 3 (0.3 s): its late answer is dropped, not accepted, and not
    paired with a later request; the answering devices keep their answers."""

    async def scenario() -> None:
        server = AwkwardServer(slow_s=0.15)
        port = await server.start()
        master = TcpMaster("127.0.0.1", port)
        batches = [([read_request(1, "holding", 0, 2)], 0.1),
                   ([read_request(2, "holding", 0, 2), read_request(2, "holding", 10, 1)], 1.0),
                   ([read_request(3, "holding", 0, 2)], 0.3),
                   ([read_request(4, "holding", 0, 2)], 1.0)]
        results = await master.transact_batches(batches)
        assert isinstance(results[0], ModbusTimeout)
        assert not isinstance(results[1], Exception)
        assert [parse_response(batches[1][0][i], results[1][i], batches[1][0][i].pdu[4]) for i in (0, 1)] \
            == [[2, 2], [2]]
        assert isinstance(results[2], ModbusTimeout)
        assert not isinstance(results[3], Exception)
        with pytest.raises(ModbusExceptionResponse):
            parse_response(batches[3][0][0], results[3][0], 2)
        assert master.requests == 5
        assert await _read(master, 2) == [2, 2, 2]  # unit 1's late answer is not taken for this one
        await master.close()
        await server.stop()

    asyncio.run(scenario())


def test_a_connection_lost_mid_exchange_keeps_the_answers_that_came() -> None:
    """The endpoint hangs up while an exchange waits: the device already answered keeps its
    answer, the others get the link error (not a time-out), and the next call reconnects."""
    from edge.modbus_pdu import ModbusLinkError

    async def scenario() -> None:
        async with _awkward(slow_s=0.0) as (server, master):
            batches = [([read_request(2, "holding", 0, 2)], 2.0), ([read_request(5, "holding", 0, 2)], 2.0),
                       ([read_request(3, "holding", 0, 2)], 2.0)]
            results = await master.transact_batches(batches)
            assert not isinstance(results[0], Exception)
            assert parse_response(batches[0][0][0], results[0][0], 2) == [2, 2]
            assert isinstance(results[1], ModbusLinkError) and isinstance(results[2], ModbusLinkError)
            assert await _read(master, 2) == [2, 2, 2]
            assert server.connections == 2

    asyncio.run(scenario())


def test_an_answer_with_an_impossible_length_ends_the_connection_not_the_link(caplog: pytest.LogCaptureFixture) -> None:
    """An MBAP length of 0 (or above 254) leaves the byte stream out of step: the master
    says so, hangs up, the waiting request fails as a link error (not an IndexError in the
    poll), and the next request reconnects."""
    from edge.modbus_pdu import ModbusLinkError

    async def scenario() -> None:
        async with _awkward(slow_s=0.0) as (server, master):
            with pytest.raises(ModbusLinkError):
                await _read(master, 6, timeout=2.0)
            assert await _read(master, 2) == [2, 2, 2]
            assert server.connections == 2

    with caplog.at_level("WARNING", logger="urbansense.edge"):
        asyncio.run(scenario())
    assert any("MBAP length of 0" in r.getMessage() for r in caplog.records)
