"""HJ 212-2017 input: a TCP server environmental stations connect to and push their data
over (urbansense/hj212.py is the codec). A station is known by its MN (the device's
`ident`) and, where the link names `password_env`, its password.

- Real-time (2011) and minute (2051) data become samples (the link's `hj212_data` can
  add hourly 2061 and daily 2031); each profile field takes the item of its `hj212:`
  code, at the station's DataTime (local time in the link's `device_tz`).
- Per-value flags: N (normal) and T (over the limit) are good readings; M (maintenance),
  S (set by hand) and C (calibration) keep the value in an uncertain sample; F
  (stopped), D (instrument fault) and B (communication fault) drop the value, and the
  sample says why.
- Answers: data answer 9014 when the Flag asks; an unknown MN or a wrong password is
  answered 9011 with QnRtn 4 or 3 when the Flag asks, logged and counted.
- Clock: a station whose real-time data times stay further than `max_clock_offset_s`
  from the gateway's clock (three packets at least 5 s apart, off by the same amount) is
  sent its time (1012, asking for the answers 9011 and 9012); a station's own time
  request (1013) is answered the same way.
- Split packets (Flag bit 1, PNUM/PNO) are joined before their data is read.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from edge.link import SampleSink
from edge.pushed import PushedDevice, device_time, new_device, number_field
from edge.stream_server import Session, StreamServerInput
from edge.telemetry import SelfTelemetry
from urbansense import hj212
from urbansense.clock import now_ms
from urbansense.config import ConfigError, LinkSpec, Profile
from urbansense.schema import FieldValue

log = logging.getLogger("urbansense.edge")

#: A station is sent its time at most this often.
TIME_SET_EVERY_MS = 600_000
#: Its clock is judged on real-time packets received at least this far apart, and found
#: off when three such packets in a row are off by more than the bound and by the same
#: amount (within CLOCK_AGREE_MS): a backlog sent again after a link loss is old data,
#: not a wrong clock, and its offsets grow by the step between readings.
CLOCK_JUDGE_EVERY_MS = 5_000
CLOCK_AGREE_MS = 30_000


@dataclass
class ClockJudge:
    last_rx: int = -(2**62)
    offsets: deque[int] = field(default_factory=lambda: deque(maxlen=3))

    def off(self, offset_ms: int, received: int, bound_ms: float) -> bool:
        """Whether this packet confirms a clock off by more than the bound."""
        if received - self.last_rx < CLOCK_JUDGE_EVERY_MS:
            return False
        self.last_rx = received
        self.offsets.append(offset_ms)
        return (len(self.offsets) == 3 and all(abs(o) > bound_ms for o in self.offsets)
                and max(self.offsets) - min(self.offsets) <= CLOCK_AGREE_MS)


def map_items(profile: Profile, cn: str, codes: dict[str, dict[str, str]]) -> tuple[dict[str, FieldValue], list[str]]:
    """(fields, problems) from a data packet's items, by each field's `hj212:` code."""
    default_suffix = hj212.DATA_COMMANDS[cn][1]
    fields: dict[str, FieldValue] = {}
    problems: list[str] = []
    for spec in profile.fields:
        if spec.hj212 is None:
            continue
        code, _, suffix = spec.hj212.partition("-")
        items = codes.get(code)
        if items is None or (suffix or default_suffix) not in items:
            continue
        text = items[suffix or default_suffix]
        flag = items.get("Flag", "N")
        if flag in hj212.FLAGS_DROP:
            problems.append(f"{spec.name} ({code}): flag {flag}, {hj212.DATA_FLAGS[flag]}; value left out")
            continue
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{spec.name} ({code}): {text[:20]!r} is not a number")
            continue
        if value != value or value in (float("inf"), float("-inf")):
            problems.append(f"{spec.name} ({code}): {text[:20]!r} is not a finite number")
            continue
        if flag in hj212.FLAGS_UNCERTAIN:
            problems.append(f"{spec.name} ({code}): flag {flag}, {hj212.DATA_FLAGS[flag]}")
        elif flag not in hj212.DATA_FLAGS:
            problems.append(f"{spec.name} ({code}): unknown data flag {flag[:4]!r}")
        fields[spec.name] = number_field(profile, spec.name, int(value) if value.is_integer() else value)
    return fields, problems


class Hj212Link(StreamServerInput):
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, sink: SampleSink,
                 telemetry: SelfTelemetry) -> None:
        super().__init__(link, sink=sink, telemetry=telemetry)
        self.tz = ZoneInfo(link.device_tz)
        self.by_mn: dict[str, PushedDevice] = {}
        for dev in link.devices:
            state = new_device(dev, profiles[dev.profile], f"{link.name} (MN {dev.ident})")
            self.devices[dev.id] = state
            assert dev.ident is not None
            self.by_mn[dev.ident] = state
        self.password: str | None = None
        if link.password_env:
            self.password = os.environ.get(link.password_env)
            if self.password is None:
                raise ConfigError([f"link {link.name}: password_env names {link.password_env}, which is not set\n"
                                   f"  fix: export {link.password_env}=<the stations' HJ 212 password>"])
        self.kinds = frozenset(link.hj212_data)
        self.time_set: dict[str, int] = {}
        self.clocks: dict[str, ClockJudge] = {}
        #: Answers stations gave to our requests, by CN and value (9011 QnRtn, 9012 ExeRtn).
        self.station_answers: dict[str, int] = {}

    def session(self, peer: str) -> Session:
        return Hj212Session(self, peer)


class Hj212Session(Session):
    server: Hj212Link

    def __init__(self, server: Hj212Link, peer: str) -> None:
        super().__init__(server, peer)
        self.reader = hj212.FrameReader()
        self.parts: dict[tuple[str, str], dict[int, hj212.Packet]] = {}

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for item in self.reader.feed(data):
            if isinstance(item, hj212.Hj212Error):
                self.refuse("garbage", str(item))
                continue
            out += self.packet(item)
        return out

    def packet(self, raw: bytes) -> list[bytes]:
        link = self.server
        try:
            pkt = hj212.decode(raw)
        except hj212.Hj212Error as exc:
            text = str(exc)
            self.refuse("crc" if "CRC" in text else "length" if "length" in text else "format",
                        f"{text}; packet starts {raw[:60]!r}")
            return []
        state = link.by_mn.get(pkt.mn)
        if state is None:
            self.refuse("unknown_device", f"MN {pkt.mn!r} is no device of this link; fix: add a device with "
                                          f"ident: {pkt.mn} to link {link.link.name}")
            return [hj212.answer(pkt, hj212.CN_REQUEST_ANSWER, "QnRtn=4").encode()] if pkt.wants_answer else []
        if link.password is not None and pkt.pw != link.password:
            self.refuse("password", f"station {state.spec.id} (MN {pkt.mn}) sent a wrong password; fix: set the "
                                    f"station's PW to the value of {link.link.password_env}")
            return [hj212.answer(pkt, hj212.CN_REQUEST_ANSWER, "QnRtn=3").encode()] if pkt.wants_answer else []
        link.telemetry.push_messages += 1
        state.messages += 1
        if pkt.cn in hj212.DATA_COMMANDS:
            return self.data(state, pkt)
        if pkt.cn in (hj212.CN_REQUEST_ANSWER, hj212.CN_EXECUTION_RESULT):
            plain, _ = pkt.params()
            key = "QnRtn" if pkt.cn == hj212.CN_REQUEST_ANSWER else "ExeRtn"
            value = plain.get(key, "?")
            link.station_answers[f"{pkt.cn}:{value}"] = link.station_answers.get(f"{pkt.cn}:{value}", 0) + 1
            meaning = (hj212.QN_RETURNS if key == "QnRtn" else hj212.EXE_RETURNS).get(value, "unknown")
            (log.info if value == "1" else log.warning)("station %s answered request %s: %s=%s (%s)",
                                                        state.spec.id, pkt.qn, key, value, meaning)
            return []
        if pkt.cn == hj212.CN_TIME_REQUEST:
            return [self.set_time(state, pkt.mn, pkt.pw)]
        self.refuse("command", f"station {state.spec.id} sent CN {pkt.cn}, which this link does not take")
        return [hj212.answer(pkt, hj212.CN_REQUEST_ANSWER, "QnRtn=8").encode()] if pkt.wants_answer else []

    def data(self, state: PushedDevice, pkt: hj212.Packet) -> list[bytes]:
        out = [hj212.answer(pkt, hj212.CN_DATA_ANSWER).encode()] if pkt.wants_answer else []
        if pkt.split:
            whole = self.join(pkt)
            if whole is None:
                return out
            pkt = whole
        link = self.server
        if hj212.DATA_COMMANDS[pkt.cn][0] not in link.kinds:
            return out
        received = now_ms()
        try:
            plain, codes = pkt.params()
        except hj212.Hj212Error as exc:
            self.refuse("format", f"station {state.spec.id}: {exc}")
            link.report(state, received, {}, [str(exc)])
            return out
        fields, problems = map_items(state.profile, pkt.cn, codes)
        t, problem = received, "DataTime missing; stamped on receipt"  # type: tuple[int, str | None]
        data_t: int | None = None
        if "DataTime" in plain:
            try:
                data_t = hj212.parse_time(plain["DataTime"], link.tz)
            except hj212.Hj212Error as exc:
                problem = f"{exc}; stamped on receipt"
            else:
                t, problem = device_time(data_t, "DataTime", received)
        if problem:
            problems.append(problem)
        link.report(state, t, fields, problems)
        if pkt.cn == "2011" and data_t is not None:
            offset = data_t - received
            last = link.time_set.get(pkt.mn, -TIME_SET_EVERY_MS)
            judge = link.clocks.setdefault(pkt.mn, ClockJudge())
            bound_ms = link.link.max_clock_offset_s * 1000
            if judge.off(offset, received, bound_ms) and received - last >= TIME_SET_EVERY_MS:
                judge.offsets.clear()
                log.warning("station %s: its clock is %+.0f s off the gateway's; sending it the time",
                            state.spec.id, offset / 1000)
                out.append(self.set_time(state, pkt.mn, pkt.pw))
        return out

    def set_time(self, state: PushedDevice, mn: str, pw: str) -> bytes:
        now = now_ms()
        self.server.time_set[mn] = now
        return hj212.Packet(qn=hj212.format_time(now, self.server.tz, millis=True), st=state.profile.hj212_st,
                            cn=hj212.CN_SET_TIME, pw=pw, mn=mn, flag=hj212.FLAG_V2017 | hj212.FLAG_ANSWER,
                            cp=f"SystemTime={hj212.format_time(now, self.server.tz)}").encode()

    def join(self, pkt: hj212.Packet) -> hj212.Packet | None:
        if pkt.pnum is None or pkt.pno is None or not 1 <= pkt.pno <= pkt.pnum:
            self.refuse("format", f"split packet with PNUM {pkt.pnum} and PNO {pkt.pno}")
            return None
        key = (pkt.mn, pkt.qn)
        parts = self.parts.setdefault(key, {})
        parts[pkt.pno] = pkt
        if len(parts) < pkt.pnum:
            if len(self.parts) > 64:
                self.parts.pop(next(iter(self.parts)))
            return None
        del self.parts[key]
        first = parts[1]
        cps = [first.cp] + [parts[i].cp.partition(";")[2] if parts[i].cp.startswith("DataTime=") else parts[i].cp
                            for i in range(2, pkt.pnum + 1)]
        return hj212.Packet(qn=first.qn, st=first.st, cn=first.cn, pw=first.pw, mn=first.mn,
                            flag=first.flag & ~hj212.FLAG_SPLIT, cp=";".join(c for c in cps if c))
