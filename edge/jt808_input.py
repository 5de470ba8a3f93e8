"""JT/T 808 input: a TCP server vehicle terminals connect to (urbansense/jt808.py is the
codec). Both the 2013 and the 2019 headers are read; every answer uses the header
version of the message it answers.

- A terminal registers (0x0100) once and is given an authentication code (0x8100), a
  keyed hash of its phone number (the link's `auth_key_env`), then authenticates
  (0x0102) on every connection. Only a terminal named by a device's `ident` is
  registered; a terminal that has not authenticated on this connection is answered
  "failure" and its reports are counted, not stored.
- A location report (0x0200) is one sample at the terminal's own time (GMT+8 BCD, read
  in the link's `device_tz`); each profile field takes its `jt808:` item. A batch upload
  (0x0704, the backlog after a coverage gap) is one sample per report, oldest first.
  Alarm bits mapped to urgent fields (the emergency button) make the sample urgent: it
  goes ahead of any backlog.
- Every message is answered with the platform general reply (0x8001); sub-packages are
  each answered and joined before they are read.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from zoneinfo import ZoneInfo

from edge.link import SampleSink
from edge.pushed import PushedDevice, device_time, new_device, number_field
from edge.stream_server import Session, StreamServerInput
from edge.telemetry import SelfTelemetry
from urbansense import jt808
from urbansense.clock import now_ms
from urbansense.config import ConfigError, LinkSpec, Profile
from urbansense.schema import FieldValue

log = logging.getLogger("urbansense.edge")


def map_location(profile: Profile, loc: jt808.Location) -> dict[str, FieldValue]:
    out: dict[str, FieldValue] = {}
    for spec in profile.fields:
        if spec.jt808 is not None:
            value = loc.item(spec.jt808)
            if value is not None:
                out[spec.name] = number_field(profile, spec.name, value)
    return out


def shift_zone(t_ms: int, tz: dt.tzinfo) -> int:
    """A BCD time the codec read as GMT+8, read instead in the terminals' zone."""
    if tz == jt808.CHINA:
        return t_ms
    naive = dt.datetime.fromtimestamp(t_ms / 1000, jt808.CHINA).replace(tzinfo=None)
    return int(naive.replace(tzinfo=tz).timestamp() * 1000)


class Jt808Link(StreamServerInput):
    def __init__(self, link: LinkSpec, profiles: dict[str, Profile], *, sink: SampleSink,
                 telemetry: SelfTelemetry) -> None:
        super().__init__(link, sink=sink, telemetry=telemetry)
        self.tz = ZoneInfo(link.device_tz)
        self.by_terminal: dict[str, PushedDevice] = {}
        for dev in link.devices:
            assert dev.ident is not None
            state = new_device(dev, profiles[dev.profile], f"{link.name} (terminal {dev.ident})")
            self.devices[dev.id] = state
            self.by_terminal[dev.ident.lstrip("0") or "0"] = state
        if link.auth_key_env:
            key = os.environ.get(link.auth_key_env)
            if not key:
                raise ConfigError([f"link {link.name}: auth_key_env names {link.auth_key_env}, which is not set\n"
                                   f"  fix: export {link.auth_key_env}=<a long random secret>"])
            self.key = key.encode()
        else:
            self.key = secrets.token_bytes(32)
        self.serial = 0

    def next_serial(self) -> int:
        self.serial = (self.serial + 1) & 0xFFFF
        return self.serial

    def session(self, peer: str) -> Session:
        return Jt808Session(self, peer)


class Jt808Session(Session):
    server: Jt808Link

    def __init__(self, server: Jt808Link, peer: str) -> None:
        super().__init__(server, peer)
        self.reader = jt808.FrameReader()
        self.joiner = jt808.Reassembler()
        self.terminal: str | None = None

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for item in self.reader.feed(data):
            if isinstance(item, jt808.Jt808Error):
                self.refuse("garbage", str(item))
                continue
            out += self.frame(item)
        return out

    def reply(self, to: jt808.Message, msg_id: int, body: bytes) -> bytes:
        return jt808.encode(jt808.Message(msg_id, to.phone, self.server.next_serial(), body, to.version))

    def general(self, to: jt808.Message, result: int) -> bytes:
        return self.reply(to, jt808.PLATFORM_REPLY, jt808.platform_reply(to.serial, to.msg_id, result))

    def frame(self, raw: bytes) -> list[bytes]:
        try:
            msg = jt808.decode(raw)
        except jt808.Jt808Error as exc:
            text = str(exc)
            self.refuse("check" if "check code" in text else "format", f"{text}; frame {raw[:40].hex()}")
            return []
        out: list[bytes] = []
        if msg.package is not None:
            out.append(self.general(msg, jt808.OK))
            whole = self.joiner.add(msg)
            if whole is None:
                return out
            msg = whole
        return out + self.message(msg)

    def message(self, msg: jt808.Message) -> list[bytes]:
        link = self.server
        state = link.by_terminal.get(msg.terminal)
        if msg.msg_id == jt808.REGISTER:
            if state is None:
                self.refuse("unknown_device", f"terminal {msg.phone} is no device of this link; fix: add a device "
                                              f"with ident: {msg.terminal} to link {link.link.name}")
                return [self.reply(msg, jt808.REGISTER_REPLY,
                                   jt808.register_reply(msg.serial, jt808.REG_NO_TERMINAL))]
            code = jt808.auth_code(link.key, msg.terminal)
            log.info("terminal %s (%s) registered", msg.terminal, state.spec.id)
            return [self.reply(msg, jt808.REGISTER_REPLY, jt808.register_reply(msg.serial, jt808.REG_OK, code))]
        if msg.msg_id == jt808.AUTHENTICATE:
            try:
                given = jt808.decode_auth(msg.body, msg.version)
            except jt808.Jt808Error as exc:
                self.refuse("body", f"terminal {msg.terminal}: {exc}")
                return [self.general(msg, jt808.BAD_MESSAGE)]
            if state is None or given != jt808.auth_code(link.key, msg.terminal):
                self.refuse("unauthenticated", f"terminal {msg.terminal} gave a wrong authentication code; it "
                                               "must register again (0x0100)")
                return [self.general(msg, jt808.FAILED)]
            self.terminal = msg.terminal
            return [self.general(msg, jt808.OK)]
        if state is None or self.terminal != msg.terminal:
            self.refuse("unauthenticated", f"{msg.name} from terminal {msg.terminal}, which has not authenticated "
                                           "on this connection; not stored")
            return [self.general(msg, jt808.FAILED)]
        link.telemetry.push_messages += 1
        state.messages += 1
        try:
            if msg.msg_id == jt808.LOCATION:
                self.location(state, msg.body)
            elif msg.msg_id == jt808.BATCH_LOCATION:
                _kind, bodies = jt808.decode_batch(msg.body)
                for body in bodies:
                    self.location(state, body)
            elif msg.msg_id == jt808.TERMINAL_REPLY:
                return []
            elif msg.msg_id not in (jt808.HEARTBEAT, jt808.DEREGISTER):
                return [self.general(msg, jt808.UNSUPPORTED)]
        except jt808.Jt808Error as exc:
            self.refuse("body", f"{msg.name} from terminal {msg.terminal} ({state.spec.id}): {exc}")
            link.report(state, now_ms(), {}, [f"{msg.name}: {exc}"])
            return [self.general(msg, jt808.BAD_MESSAGE)]
        return [self.general(msg, jt808.OK)]

    def location(self, state: PushedDevice, body: bytes) -> None:
        """One report; a report that cannot be read is a bad sample saying why (the others
        of its batch are read all the same)."""
        received = now_ms()
        try:
            loc = jt808.decode_location(body)
        except jt808.Jt808Error as exc:
            self.refuse("body", f"location report from terminal {state.spec.ident} ({state.spec.id}): {exc}")
            self.server.report(state, received, {}, [f"location report: {exc}"])
            return
        t, problem = device_time(shift_zone(loc.t_ms, self.server.tz), "time", received)
        self.server.report(state, t, map_location(state.profile, loc), [problem] if problem else [])
