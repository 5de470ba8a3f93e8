"""One physical Modbus link (a TCP endpoint or a serial port) and the devices behind it.

The link is a transaction queue: one request at a time on one connection, shared by
polling and command writes across every unit id on it (an asyncio.Lock, which is FIFO,
so a command waits for at most the poll in progress). Each device keeps its own
schedule, staggered across the interval so that fifty devices on a link do not all
fall due at the same instant. A device that fails is backed off exponentially (capped)
and reported as a `q: "bad"` sample; nothing a device does ends the link's task.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge.deadband import ReportByException
from edge.decoding import decode_read, field_value
from edge.modbus_pdu import (
    ILLEGAL_DATA_ADDRESS,
    ModbusExceptionResponse,
    ModbusLinkError,
    ModbusProtocolError,
    ModbusTimeout,
    Request,
    parse_response,
    read_request,
    write_coil_request,
    write_registers_request,
)
from edge.modbus_transport import ModbusMaster, RtuMaster, TcpMaster
from edge.planner import ReadRequest, plan_reads, split_per_field
from edge.telemetry import SelfTelemetry
from urbansense import clock
from urbansense.config import DeviceSpec, FieldSpec, LinkSpec, PollingSpec, Profile
from urbansense.schema import FieldValue, Sample

log = logging.getLogger("urbansense.edge")

SampleSink = Callable[[Sample], None]

POLL_ERRORS = (ModbusTimeout, ModbusLinkError, ModbusExceptionResponse, ModbusProtocolError, OSError)


@dataclass
class DeviceState:
    spec: DeviceSpec
    profile: Profile
    plan: list[ReadRequest]
    interval_s: float
    timeout_s: float
    pause_s: float
    deadband: ReportByException
    next_due: float = 0.0
    ok: bool | None = None  # None until first polled
    last_error: str = ""
    fail_streak: int = 0
    polls: int = 0
    failures: int = 0
    split_reads: bool = False
    #: A pipelined read was refused: this device is read one request at a time.
    one_by_one: bool = False
    unreadable: list[str] = field(default_factory=list)
    urgent_last: dict[str, FieldValue] = field(default_factory=dict)

    #: The profile's urgent fields (worked out once: every poll looks at them).
    urgent_fields: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.urgent_fields = [f.name for f in self.profile.fields if f.urgent]


def error_reason(exc: BaseException) -> tuple[str, str]:
    """(metric code, human reason) of a failed poll."""
    if isinstance(exc, ModbusTimeout | TimeoutError):
        return "timeout", "timeout"
    if isinstance(exc, ModbusExceptionResponse):
        return f"exception_{exc.code}", str(exc)
    if isinstance(exc, ModbusLinkError | OSError):
        return "link", str(exc)[:200]
    return "protocol", str(exc)[:200]


class UrgentTracking(Protocol):
    urgent_last: dict[str, FieldValue]

    @property
    def urgent_fields(self) -> list[str]: ...


def is_urgent(state: UrgentTracking, fields: dict[str, FieldValue]) -> bool:
    """Urgent when a field the profile marks urgent is active (true / non-zero) or has
    just changed (an alarm that clears matters too)."""
    urgent = False
    for name in state.urgent_fields:
        if name not in fields:
            continue
        value = fields[name]
        if bool(value) or (name in state.urgent_last and state.urgent_last[name] != value):
            urgent = True
        state.urgent_last[name] = value
    return urgent


def _values(req: ReadRequest, request: Request, answer: bytes) -> list[int]:
    data = parse_response(request, answer, req.count)
    if len(data) < req.count:
        raise ModbusProtocolError(f"asked {req.count} values of {req.table} {req.address}, got {len(data)}")
    return data


def make_master(link: LinkSpec) -> ModbusMaster:
    if link.transport == "rtu":
        assert link.serial is not None
        s = link.serial
        return RtuMaster(s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits,
                         bytesize=s.bytesize)
    return TcpMaster(link.host, link.port, connect_timeout_s=max(link.timeout_s, 1.0))


class ModbusLink:
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, default_interval_s: float,
                 polling: PollingSpec, sink: SampleSink, telemetry: SelfTelemetry,
                 master: ModbusMaster | None = None) -> None:
        self.link = link
        self.polling = polling
        self.sink = sink
        self.telemetry = telemetry
        self.master = master or make_master(link)
        self.pipelined = link.pipeline and link.transport == "tcp"
        # Event time (the scenario clock from the environment, else the wall clock),
        # parsed once rather than on every poll.
        self.now_ms = clock.current().now_ms
        self.lock = asyncio.Lock()  # the transaction queue
        self.devices: dict[str, DeviceState] = {}
        for dev in link.devices:
            profile = profiles[dev.profile]
            self.devices[dev.id] = DeviceState(
                spec=dev, profile=profile,
                plan=plan_reads(profile.fields, max_gap=polling.max_gap),
                interval_s=dev.poll_interval_s or default_interval_s,
                timeout_s=dev.timeout_s or link.timeout_s,
                pause_s=dev.pause_s if dev.pause_s is not None else link.pause_s,
                deadband=ReportByException(profile.fields),
            )

    # ------------------------------------------------------------------ schedule
    async def run(self) -> None:
        start = time.monotonic()
        states = list(self.devices.values())
        heap: list[tuple[float, int]] = []
        for i, state in enumerate(states):
            # Stagger: device i of n starts i/n of its interval after the link starts.
            state.next_due = start + state.interval_s * i / max(1, len(states))
            heap.append((state.next_due, i))
        heapq.heapify(heap)
        try:
            while True:
                due, i = heapq.heappop(heap)
                state = states[i]
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await self._poll_and_emit(state, due)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug on one device must not end the link's task
                    log.exception("polling %s failed unexpectedly; it stays scheduled", state.spec.id)
                    state.next_due = time.monotonic() + self.polling.backoff_max_s
                heapq.heappush(heap, (state.next_due, i))
        finally:
            await self.master.close()

    def _reschedule(self, state: DeviceState, due: float, now: float) -> None:
        nxt = due + state.interval_s
        if nxt <= now:  # overran: skip the missed cycles instead of bunching polls
            nxt += ((now - nxt) // state.interval_s + 1) * state.interval_s
        if state.fail_streak:
            backoff = min(self.polling.backoff_min_s * 2 ** (state.fail_streak - 1), self.polling.backoff_max_s)
            nxt = max(nxt, now + backoff)
        state.next_due = nxt

    async def _poll_and_emit(self, state: DeviceState, due: float) -> None:
        async with self.lock:
            started = time.monotonic()  # jitter counts from here: waiting for a command is not polling
            before = self.master.requests
            sample = await self.poll(state)
            sent = self.master.requests - before
        done = time.monotonic()
        self.telemetry.poll_done(self.link.name, started - due, done - started, sent)
        self._reschedule(state, due, done)
        if sample is not None:
            self.sink(sample)

    async def poll(self, state: DeviceState) -> Sample | None:
        """Read every planned request of one device (caller holds the link)."""
        state.polls += 1
        try:
            fields, unreadable = await self._read_fields(state)
        except POLL_ERRORS as exc:
            return self._failed(state, exc)
        if unreadable and unreadable != state.unreadable:
            log.warning("device %s refuses %s (illegal data address); check those addresses in profile %s",
                        state.spec.id, ", ".join(unreadable), state.profile.profile)
        state.unreadable = unreadable
        t = self.now_ms()
        if state.ok is False:
            log.info("device %s on %s answers again", state.spec.id, self.link.name)
        state.ok, state.fail_streak, state.last_error = True, 0, ""
        self.telemetry.device_state(state.spec.id, True)
        urgent = is_urgent(state, fields)
        fields = state.deadband.filter(fields, t)
        if not fields:
            return None
        self.telemetry.sample_taken()
        if unreadable:
            return Sample(dev=state.spec.id, m=state.profile.measurement, t=t, f=fields, q="uncertain",
                          err=f"unreadable: {', '.join(unreadable)}", urgent=urgent)
        return Sample(dev=state.spec.id, m=state.profile.measurement, t=t, f=fields, urgent=urgent)

    async def _read_fields(self, state: DeviceState) -> tuple[dict[str, FieldValue], list[str]]:
        """Every field of one device, and the fields it refuses (illegal data address)."""
        fields: dict[str, FieldValue] = {}
        unreadable: list[str] = []
        if self.pipelined and len(state.plan) > 1 and not state.one_by_one:
            try:
                return await self._read_pipelined(state), []
            except ModbusExceptionResponse as exc:
                if exc.code != ILLEGAL_DATA_ADDRESS:
                    raise
                # A read is refused: the one-by-one path below finds which (and splits it).
                state.one_by_one = True
        i = 0
        while i < len(state.plan):
            req = state.plan[i]
            try:
                data = await self._read(state, req)
            except ModbusExceptionResponse as exc:
                if exc.code != ILLEGAL_DATA_ADDRESS:
                    raise
                if len(req.fields) > 1:
                    self._fall_back(state, i, req)
                    continue  # the same index now holds the first smaller read
                if not unreadable or unreadable[-1] != req.fields[0].name:
                    unreadable.append(req.fields[0].name)
                i += 1
                if i == len(state.plan) and not fields:
                    raise  # nothing at all is readable: the device (or its profile) is wrong
                continue
            fields.update(decode_read(req, state.profile, data))
            i += 1
        return fields, unreadable

    async def _read_pipelined(self, state: DeviceState) -> dict[str, FieldValue]:
        """All planned reads of a device sent back to back (link `pipeline: true`)."""
        requests = [self._request(state, req) for req in state.plan]
        try:
            answers = await self.master.transact_many(requests, state.timeout_s)
        finally:
            if state.pause_s:
                await asyncio.sleep(state.pause_s)
        fields: dict[str, FieldValue] = {}
        for req, request, answer in zip(state.plan, requests, answers, strict=True):
            fields.update(decode_read(req, state.profile, _values(req, request, answer)))
        return fields

    def _fall_back(self, state: DeviceState, i: int, req: ReadRequest) -> None:
        state.plan[i : i + 1] = split_per_field(req)
        state.split_reads = True
        log.warning("device %s refused a merged read of %s %d+%d (illegal data address); "
                    "reading those fields one by one from now on", state.spec.id, req.table,
                    req.address, req.count)

    def _request(self, state: DeviceState, req: ReadRequest) -> Request:
        """The read's request; built once per device (the same bytes every poll)."""
        unit = state.spec.unit
        cached = req.request
        if cached is not None and cached[0] == unit:
            return cached[1]
        request = read_request(unit, req.table, req.address, req.count)
        req.request = (unit, request)
        return request

    async def _read(self, state: DeviceState, req: ReadRequest) -> list[int]:
        request = self._request(state, req)
        try:
            answer = await self.master.transact(request, state.timeout_s)
        finally:
            if state.pause_s:
                await asyncio.sleep(state.pause_s)
        return _values(req, request, answer)

    def _failed(self, state: DeviceState, exc: BaseException) -> Sample:
        code, reason = error_reason(exc)
        state.failures += 1
        state.fail_streak += 1
        if state.ok is not False or reason != state.last_error:
            log.warning("device %s (unit %d on %s) failed: %s; backing off", state.spec.id,
                        state.spec.unit, self.link.name, reason)
        state.ok, state.last_error = False, reason
        self.telemetry.poll_failed(code)
        self.telemetry.device_state(state.spec.id, False)
        return Sample(dev=state.spec.id, m=state.profile.measurement, t=self.now_ms(), f={}, q="bad", err=reason)

    # ------------------------------------------------------------------ commands
    async def write_and_verify(self, state: DeviceState, spec: FieldSpec, words: list[int]) -> FieldValue:
        """Write a field and read it back, in one turn of the transaction queue."""
        assert spec.address is not None
        unit = state.spec.unit
        async with self.lock:
            if spec.table == "coil":
                request = write_coil_request(unit, spec.address, bool(words[0]))
            else:
                request = write_registers_request(unit, spec.address, words)
            parse_response(request, await self.master.transact(request, state.timeout_s))
            if state.pause_s:
                await asyncio.sleep(state.pause_s)
            back = ReadRequest(spec.table, spec.address, spec.registers, [spec])
            data = await self._read(state, back)
        return field_value(spec, state.profile, data[: spec.registers])
