"""One physical Modbus link (a TCP endpoint or a serial port) and the devices behind it.

The link is a transaction queue: one request at a time on one connection, shared by
polling and command writes across every unit id on it (an asyncio.Lock, which is FIFO,
so a command waits for at most the poll in progress). Each device keeps its own
schedule, staggered across the interval so that fifty devices on a link do not all
fall due at the same instant. A device that fails is backed off exponentially (capped)
and reported as a `q: "bad"` sample; nothing a device does ends the link's task.

With `coalesce_ms` (pipelined TCP links), the devices due within that window of the one
the scheduler woke for are polled in one exchange: all their reads in one write, each
device still with its own time-out, back-off, fallback and sample.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Protocol

from edge.deadband import ReportByException
from edge.decoding import decode_read, field_value, read_decoder
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
from edge.modbus_transport import FramedTcpMaster, ModbusMaster, RtuMaster, TcpMaster
from edge.planner import ReadRequest, plan_reads, split_per_field
from edge.telemetry import SelfTelemetry
from urbansense import clock
from urbansense.config import ConfigError, DeviceSpec, FieldSpec, LinkSpec, ModbusTlsSpec, PollingSpec, Profile
from urbansense.schema import FieldValue, Sample

log = logging.getLogger("urbansense.edge")

SampleSink = Callable[[Sample], None]

POLL_ERRORS = (ModbusTimeout, ModbusLinkError, ModbusExceptionResponse, ModbusProtocolError, OSError)


@dataclass(slots=True)
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
    #: The plan's requests (`ModbusLink._requests`); None when the plan changed.
    requests: list[Request] | None = None

    #: The profile's urgent fields (worked out once: every poll looks at them).
    urgent_fields: list[str] = field(init=False)

    #: No urgent field and no report by exception: a good poll's sample is its fields as
    #: decoded (what `ModbusLink._plain_sample` relies on).
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        self.urgent_fields = [f.name for f in self.profile.fields if f.urgent]
        self.plain = not self.urgent_fields and not self.deadband.rules


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


class _ReadOneByOne:
    """`_batched_sample`'s answer when a device must be read one by one."""


_ONE_BY_ONE = _ReadOneByOne()


def _fields(req: ReadRequest, profile: Profile, request: Request, answer: bytes) -> dict[str, FieldValue]:
    """One read's fields from its answer: the whole-read decoder (one struct call) where
    it serves and the answer is a plain register read, else the general path (which also
    raises the precise error of a refused or malformed answer)."""
    fast = req.fast
    if fast is None or fast[0] is not profile:
        fast = req.fast = (profile, read_decoder(req, profile))
    decoder = fast[1]
    if decoder is not None and (data := _register_data(req, request, answer)) is not None:
        return decoder(data)
    return decode_read(req, profile, _values(req, request, answer))


def _register_data(req: ReadRequest, request: Request, answer: bytes) -> bytes | None:
    """The data bytes of a plain, complete register read's answer (the function code
    asked, an even byte count covering the read); None for anything else (an exception
    answer, a short or malformed one), which the general path judges."""
    if len(answer) < 3 or answer[0] != request.pdu[0]:
        return None
    n = answer[1]
    if n != len(answer) - 2 or n % 2 or n < 2 * req.count:
        return None
    return answer[2:]


def _decode_all(state: DeviceState, requests: list[Request], answers: list[bytes]) -> dict[str, FieldValue]:
    """A device's fields from the answers to its planned reads, in plan order."""
    plan = state.plan
    if len(plan) == 1 and len(answers) == 1:  # the common device: one read
        return _fields(plan[0], state.profile, requests[0], answers[0])
    fields: dict[str, FieldValue] = {}
    for req, request, answer in zip(state.plan, requests, answers, strict=True):
        fields.update(_fields(req, state.profile, request, answer))
    return fields


def tls_context(spec: ModbusTlsSpec) -> ssl.SSLContext:
    """The client side of Modbus/TCP Security: TLS 1.2 or later, the device's certificate
    checked against ca_file, the gateway's own certificate offered when configured."""
    try:
        ctx = ssl.create_default_context(cafile=spec.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if spec.cert_file and spec.key_file:
            ctx.load_cert_chain(spec.cert_file, spec.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"tls: cannot load {spec.ca_file}, {spec.cert_file}, {spec.key_file}: {exc}\n"
                           "  fix: point ca_file, cert_file and key_file at PEM files the agent can read"]) from None
    return ctx


def make_master(link: LinkSpec) -> ModbusMaster:
    kind = link.modbus_framing
    if link.transport == "rtu":
        assert link.serial is not None
        s = link.serial
        return RtuMaster(s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits,
                         bytesize=s.bytesize, framing=kind)
    connect_timeout_s = max(link.timeout_s, 1.0)
    if kind != "mbap":
        return FramedTcpMaster(link.host, link.port, kind, connect_timeout_s=connect_timeout_s)
    tls = tls_context(link.tls) if link.tls is not None else None
    return TcpMaster(link.host, link.port, connect_timeout_s=connect_timeout_s, tls=tls,
                     server_name=link.tls.server_name if link.tls else None)


class ModbusLink:
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, default_interval_s: float,
                 polling: PollingSpec, sink: SampleSink, telemetry: SelfTelemetry,
                 master: ModbusMaster | None = None) -> None:
        self.link = link
        self.polling = polling
        self.sink = sink
        self.telemetry = telemetry
        self.master = master or make_master(link)
        self.pipelined = link.pipeline and link.transport == "tcp" and link.modbus_framing == "mbap"
        #: Devices due within this many seconds of the one the scheduler woke for are
        #: polled with it (link `coalesce_ms`): in one exchange on a pipelined link, one
        #: after another otherwise; 0: each device at its own time.
        self.coalesce_s = link.coalesce_ms / 1000.0
        # Event time (the scenario clock from the environment, else the wall clock),
        # parsed once rather than on every poll.
        self.now_ms = clock.current().now_ms
        self.lock = asyncio.Lock()  # the transaction queue
        #: Set by stop(): the schedule ends after the poll under way, whose reading is kept.
        self.stopping = False
        self._waiting = False  # between polls (cancelling then loses nothing)
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
            while not self.stopping:
                due, i = heapq.heappop(heap)
                delay = due - time.monotonic()
                if delay > 0:
                    self._waiting = True
                    await asyncio.sleep(delay)
                    self._waiting = False
                if self.coalesce_s and self.pipelined:
                    group = self._take_group(heap, states, due, i)
                    await self._guarded(self._poll_group([(states[j], d) for d, j in group]),
                                        [states[j] for _d, j in group])
                    for _d, j in group:
                        heapq.heappush(heap, (states[j].next_due, j))
                    continue
                if self.coalesce_s:  # a scan class: the devices due soon, one after another
                    group = self._take_group(heap, states, due, i)
                    for d, j in group:
                        if self.stopping:
                            break
                        await self._guarded(self._poll_and_emit(states[j], d), [states[j]])
                        heapq.heappush(heap, (states[j].next_due, j))
                    continue
                state = states[i]
                await self._guarded(self._poll_and_emit(state, due), [state])
                heapq.heappush(heap, (state.next_due, i))
        finally:
            await self.master.close()

    def stop(self, task: asyncio.Task[None]) -> None:
        """End `task` (this link's run()) without losing a reading: at once when it waits
        for the next poll, else once the poll under way has delivered its sample."""
        self.stopping = True
        if self._waiting:
            task.cancel()

    async def _guarded(self, poll: Coroutine[object, object, None], states: list[DeviceState]) -> None:
        try:
            await poll
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug on one device must not end the link's task
            names = ", ".join(state.spec.id for state in states)
            log.exception("polling %s failed unexpectedly; it stays scheduled", names)
            for state in states:
                state.next_due = time.monotonic() + self.polling.backoff_max_s

    def _take_group(self, heap: list[tuple[float, int]], states: list[DeviceState], due: float,
                    i: int) -> list[tuple[float, int]]:
        """The device the scheduler woke for and every device due within `coalesce_ms`
        of it (or already overdue), up to `max_outstanding` requests in flight."""
        group = [(due, i)]
        room = self.link.max_outstanding - len(states[i].plan)
        horizon = max(due, time.monotonic()) + self.coalesce_s
        while heap and heap[0][0] <= horizon:
            need = len(states[heap[0][1]].plan)
            if need > room:
                break
            group.append(heapq.heappop(heap))
            room -= need
        return group

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

    async def _poll_group(self, group: list[tuple[DeviceState, float]]) -> None:
        """Poll several devices in one exchange: every read of every device in one write
        (each device with its own time-out), the answers collected as they come; then
        each device's sample as `_poll_and_emit` makes it. A device read one by one (it
        refused a pipelined read) is polled on its own, after the others."""
        alone = [(state, due) for state, due in group if state.one_by_one]
        batched = [(state, due) for state, due in group if not state.one_by_one] if alone else group
        polled: list[tuple[DeviceState, float, Sample | None, int]] = []
        async with self.lock:
            started = time.monotonic()
            requests = [self._requests(state) for state, _due in batched]
            results: list[list[bytes] | Exception] = []
            if batched:
                try:
                    results = await self.master.transact_batches(
                        [(reqs, state.timeout_s) for (state, _due), reqs in zip(batched, requests, strict=True)])
                except POLL_ERRORS as exc:  # no connection: every device fails alike
                    results = [exc] * len(batched)
                finally:
                    pause = max(state.pause_s for state, _due in batched)
                    if pause:
                        await asyncio.sleep(pause)
            t = self.now_ms()
            for (state, due), reqs, result in zip(batched, requests, results, strict=True):
                outcome = self._batched_sample(state, reqs, result, t)
                if isinstance(outcome, _ReadOneByOne):  # a read was refused: read this device one by one now
                    before = self.master.requests
                    outcome = await self._one_by_one(state)
                    polled.append((state, due, outcome, len(reqs) + self.master.requests - before))
                else:
                    polled.append((state, due, outcome, len(reqs)))
            for state, due in alone:
                before = self.master.requests
                sample = await self.poll(state)
                polled.append((state, due, sample, self.master.requests - before))
        done = time.monotonic()
        jitters: list[float] = []
        sent = 0
        sink = self.sink
        for state, due, sample, requests_sent in polled:
            jitters.append(started - due)
            sent += requests_sent
            self._reschedule(state, due, done)
            if sample is not None:
                sink(sample)
        self.telemetry.polls_done(self.link.name, jitters, done - started, sent)

    def _batched_sample(self, state: DeviceState, requests: list[Request], result: list[bytes] | Exception,
                        t: int) -> Sample | _ReadOneByOne | None:
        """One device's sample from its answers in a coalesced exchange; _ONE_BY_ONE when
        a read was refused (illegal data address) and the device must be read one by one."""
        state.polls += 1
        if state.plain and state.ok and result.__class__ is list:
            sample = self._plain_sample(state, requests, result, t)
            if sample is not None:
                return sample
        try:
            if isinstance(result, Exception):
                raise result
            fields = _decode_all(state, requests, result)
        except ModbusExceptionResponse as exc:
            if exc.code != ILLEGAL_DATA_ADDRESS:
                return self._failed(state, exc)
            # From now on this device is read one by one (as `_read_fields`).
            state.one_by_one = True
            return _ONE_BY_ONE
        except POLL_ERRORS as exc:
            return self._failed(state, exc)
        return self._succeeded(state, fields, [], t)

    def _plain_sample(self, state: DeviceState, requests: list[Request], answers: list[bytes],
                      t: int) -> Sample | None:
        """The common poll of a scan: a device that answered last time, one planned read
        with its whole-read decoder, a well-formed answer, nothing urgent and nothing
        reported by exception. Its sample is the decoded fields, as `_succeeded` would make
        it, without the layers; None sends the poll down the general path."""
        plan = state.plan
        if len(plan) != 1 or len(answers) != 1 or state.unreadable:
            return None
        fast = plan[0].fast
        if fast is None or fast[0] is not state.profile or fast[1] is None:
            return None  # the first poll (the general path compiles the decoder)
        data = _register_data(plan[0], requests[0], answers[0])
        if data is None:
            return None
        self.telemetry.samples += 1
        return Sample(state.spec.id, state.profile.measurement, t, fast[1](data), "good", None, False)

    async def _one_by_one(self, state: DeviceState) -> Sample | None:
        try:
            fields, unreadable = await self._read_fields(state)
        except POLL_ERRORS as exc:
            return self._failed(state, exc)
        return self._succeeded(state, fields, unreadable)

    async def poll(self, state: DeviceState) -> Sample | None:
        """Read every planned request of one device (caller holds the link)."""
        state.polls += 1
        return await self._one_by_one(state)

    def _succeeded(self, state: DeviceState, fields: dict[str, FieldValue],
                   unreadable: list[str], t: int | None = None) -> Sample | None:
        if unreadable != state.unreadable:
            if unreadable:
                log.warning("device %s refuses %s (illegal data address); check those addresses in profile %s",
                            state.spec.id, ", ".join(unreadable), state.profile.profile)
            state.unreadable = unreadable
        if t is None:
            t = self.now_ms()
        if state.ok is not True:  # first poll, or answers again: every poll comes here
            if state.ok is False:
                log.info("device %s on %s answers again", state.spec.id, self.link.name)
            state.ok, state.fail_streak, state.last_error = True, 0, ""
            self.telemetry.device_state(state.spec.id, True)
        urgent = is_urgent(state, fields) if state.urgent_fields else False
        fields = state.deadband.filter(fields, t)
        if not fields:
            return None
        self.telemetry.samples += 1
        if unreadable:
            return Sample(dev=state.spec.id, m=state.profile.measurement, t=t, f=fields, q="uncertain",
                          err=f"unreadable: {', '.join(unreadable)}", urgent=urgent)
        return Sample(state.spec.id, state.profile.measurement, t, fields, "good", None, urgent)

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
                request, answer = await self._read(state, req)
                read = _fields(req, state.profile, request, answer)
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
            fields.update(read)
            i += 1
        return fields, unreadable

    async def _read_pipelined(self, state: DeviceState) -> dict[str, FieldValue]:
        """All planned reads of a device sent back to back (link `pipeline: true`)."""
        requests = self._requests(state)
        try:
            answers = await self.master.transact_many(requests, state.timeout_s)
        finally:
            if state.pause_s:
                await asyncio.sleep(state.pause_s)
        return _decode_all(state, requests, answers)

    def _fall_back(self, state: DeviceState, i: int, req: ReadRequest) -> None:
        state.plan[i : i + 1] = split_per_field(req)
        state.requests = None
        state.split_reads = True
        log.warning("device %s refused a merged read of %s %d+%d (illegal data address); "
                    "reading those fields one by one from now on", state.spec.id, req.table,
                    req.address, req.count)

    def _requests(self, state: DeviceState) -> list[Request]:
        """The device's planned reads as requests; built once (`_fall_back` resets them)."""
        requests = state.requests
        if requests is None:
            requests = state.requests = [self._request(state, req) for req in state.plan]
        return requests

    def _request(self, state: DeviceState, req: ReadRequest) -> Request:
        """The read's request; built once per device (the same bytes every poll)."""
        unit = state.spec.unit
        cached = req.request
        if cached is not None and cached[0] == unit:
            return cached[1]
        request = read_request(unit, req.table, req.address, req.count)
        req.request = (unit, request)
        return request

    async def _read(self, state: DeviceState, req: ReadRequest) -> tuple[Request, bytes]:
        request = self._request(state, req)
        try:
            answer = await self.master.transact(request, state.timeout_s)
        finally:
            if state.pause_s:
                await asyncio.sleep(state.pause_s)
        return request, answer

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
    async def read_raw(self, state: DeviceState, table: str, address: int, count: int) -> list[int]:
        """Registers (or bits) as the device holds them, in one turn of the transaction
        queue (a remote probe, edge/diagnostics.py)."""
        request = read_request(state.spec.unit, table, address, count)
        async with self.lock:
            return parse_response(request, await self.master.transact(request, state.timeout_s), count)[:count]

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
            data = _values(back, *await self._read(state, back))
        return field_value(spec, state.profile, data[: spec.registers])
