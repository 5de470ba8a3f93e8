"""Silences: matchers with an expiry that keep matching firing alerts quiet.

A silence is a retained MQTT message on `city/rules/silences/{id}` so that every
engine instance (and a restarted one) sees the same set; `urbansense rules silence`
writes and removes them. Matchers are shell-style globs on the alert's labels:

    {"id": "gas-works-1", "matchers": {"rule": "gas.*", "district": "pudong"},
     "starts": 1764190000000, "ends": 1764197200000, "comment": "planned works", "by": "duty"}

Times are epoch ms compared with the alert's event time.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

SILENCE_TOPIC_PREFIX = "city/rules/silences/"
ALL_SILENCES = SILENCE_TOPIC_PREFIX + "+"
LABELS = ("rule", "domain", "district", "device", "severity")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class SilenceError(ValueError):
    pass


@dataclass(slots=True)
class Silence:
    id: str
    matchers: dict[str, str]
    starts: int
    ends: int
    comment: str = ""
    by: str = ""
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.id):
            raise SilenceError(f"silence id {self.id!r}: use lower-case letters, digits and '-'")
        for key in self.matchers:
            if key not in LABELS:
                raise SilenceError(f"silence {self.id}: unknown matcher {key!r}; use one of {', '.join(LABELS)}")
        if not self.matchers:
            raise SilenceError(f"silence {self.id}: needs at least one matcher, e.g. rule=gas.*")
        if self.ends <= self.starts:
            raise SilenceError(f"silence {self.id}: ends must be after starts")
        self._compiled = {k: re.compile(fnmatch.translate(v)) for k, v in self.matchers.items()}

    def matches(self, labels: dict[str, str | None], t: int) -> bool:
        if not (self.starts <= t < self.ends):
            return False
        return all(p.match(labels.get(k) or "") for k, p in self._compiled.items())

    def to_wire(self) -> bytes:
        return orjson.dumps({"id": self.id, "matchers": self.matchers, "starts": self.starts,
                             "ends": self.ends, "comment": self.comment, "by": self.by})

    @classmethod
    def from_wire(cls, payload: bytes) -> Silence:
        try:
            raw: Any = orjson.loads(payload)
            return cls(id=str(raw["id"]), matchers={str(k): str(v) for k, v in raw["matchers"].items()},
                       starts=int(raw["starts"]), ends=int(raw["ends"]),
                       comment=str(raw.get("comment", "")), by=str(raw.get("by", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SilenceError(f"not a silence: {exc}") from None


def parse_matchers(items: list[str]) -> dict[str, str]:
    """`["rule=gas.*", "district=pudong"]` -> {"rule": "gas.*", "district": "pudong"}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise SilenceError(f"matcher {item!r}: write label=pattern, e.g. district=pudong")
        if key not in LABELS:
            raise SilenceError(f"matcher {item!r}: unknown label {key!r}; use one of {', '.join(LABELS)}")
        out[key] = value
    return out


class SilenceSet:
    def __init__(self) -> None:
        self._by_id: dict[str, Silence] = {}

    def put(self, silence: Silence) -> None:
        self._by_id[silence.id] = silence

    def remove(self, silence_id: str) -> None:
        self._by_id.pop(silence_id, None)

    def active(self, t: int) -> list[Silence]:
        return [s for s in self._by_id.values() if s.starts <= t < s.ends]

    def __len__(self) -> int:
        return len(self._by_id)

    def silenced(self, labels: dict[str, str | None], t: int) -> bool:
        return any(s.matches(labels, t) for s in self._by_id.values())

    def handle_message(self, topic: str, payload: bytes) -> None:
        """Apply a retained message from city/rules/silences/{id} (empty payload removes)."""
        silence_id = topic.rsplit("/", 1)[-1]
        if not payload:
            self.remove(silence_id)
            return
        self.put(Silence.from_wire(payload))


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration_s(text: str) -> float:
    """'2h', '90m', '1h30m', '45s', '3600' -> seconds."""
    m = _DURATION_RE.match(text.strip())
    if not text.strip() or m is None or not any(m.groups()):
        raise SilenceError(f"duration {text!r}: write e.g. 2h, 30m, 1h30m or 90s")
    d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s
