"""Alert episodes that a person owns: acknowledgement, assignment, resolution with a note,
and escalation of what nobody acknowledges (issue 21). Neither Grafana's alerting nor
Alertmanager has acknowledgement; this is it.

An episode is one firing of one alert (`alert_id` and its start): it opens `new` when the
alert fires, is `acknowledged` (and may be assigned) by an officer, and is `resolved`
with a note by an officer. The alert's own state (firing, resolved by the rules) is kept
beside it: an alert that clears by itself leaves its episode open until an officer
closes it, since someone should look at what happened.

A critical episode nobody acknowledges climbs its domain's chain (duty officer -> shift
supervisor -> city operations centre by default; per domain in the escalation file),
one level each time its step's `after_s` passes since the episode opened. Everything is
kept in SQLite (state survives a restart) with its history, and each change is a line
of the `alert_episodes` measurement for the record.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbansense.config import load_model
from urbansense.lineprotocol import encode_point
from urbansense.schema import AlertEvent

STATES = ("new", "acknowledged", "resolved")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: str = Field(min_length=1, max_length=64)
    #: Seconds after the episode opened at which an unacknowledged critical one reaches this level.
    after_s: float = Field(ge=0)


class Chain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chain: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _rising(self) -> Chain:
        times = [s.after_s for s in self.chain]
        if times[0] != 0 or times != sorted(times):
            raise ValueError("the first step is at after_s 0 and each later one after the one before")
        return self


class EscalationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: Chain
    domains: dict[str, Chain] = Field(default_factory=dict)

    def chain(self, domain: str) -> list[Step]:
        return (self.domains.get(domain) or self.default).chain


def load_escalation(path: Path) -> EscalationConfig:
    return load_model(path, EscalationConfig)


@dataclass(frozen=True, slots=True)
class Episode:
    id: str
    alert_id: str
    rule: str
    domain: str
    district: str
    device: str | None
    severity: str
    message: str
    state: str
    alert_state: str
    level: int
    level_name: str
    owner: str | None
    opened_at: int
    changed_at: int
    note: str | None
    #: An early warning's forecast: when the hazard threshold is expected to be crossed (epoch ms).
    crosses_at: int | None = None


class DutyError(ValueError):
    """An action that does not apply (unknown episode, already resolved, empty note)."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
  id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, rule TEXT NOT NULL, domain TEXT NOT NULL, district TEXT NOT NULL,
  device TEXT, severity TEXT NOT NULL, message TEXT NOT NULL, state TEXT NOT NULL, alert_state TEXT NOT NULL,
  level INTEGER NOT NULL, level_name TEXT NOT NULL, owner TEXT, opened_at INTEGER NOT NULL,
  changed_at INTEGER NOT NULL, note TEXT, crosses_at INTEGER);
CREATE INDEX IF NOT EXISTS episodes_open ON episodes (state, alert_id);
CREATE TABLE IF NOT EXISTS history (
  episode TEXT NOT NULL, t INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_episode ON history (episode, t);
"""


class DutyBook:
    """The episodes and their history. Thread-safe; `now_ms` is the clock (a test's is fake)."""

    def __init__(self, path: Path, escalation: EscalationConfig, now_ms: Callable[[], int],
                 on_change: Callable[[Episode, str, str], None] | None = None) -> None:
        self.escalation = escalation
        self.now_ms = now_ms
        self.on_change = on_change
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ reading
    # Reads take the lock too: the connection is shared, and a read beside another
    # thread's open transaction would see its uncommitted rows.
    def get(self, episode_id: str) -> Episode:
        with self._lock:
            row = self._db.execute("SELECT * FROM episodes WHERE id = ?", (episode_id,)).fetchone()
        if row is None:
            raise DutyError(f"no episode {episode_id!r}")
        return Episode(*row)

    def open_episodes(self) -> list[Episode]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM episodes WHERE state != 'resolved' ORDER BY opened_at").fetchall()
        return [Episode(*r) for r in rows]

    def history(self, episode_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT t, who, action, detail FROM history WHERE episode = ? ORDER BY t, rowid",
                                    (episode_id,)).fetchall()
        return [{"t": t, "who": who, "action": action, "detail": detail} for t, who, action, detail in rows]

    # ------------------------------------------------------------------ changes
    def _record(self, db: sqlite3.Connection, ep: Episode, who: str, action: str, detail: str) -> None:
        db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?)", (ep.id, ep.changed_at, who, action, detail))

    def _save(self, db: sqlite3.Connection, ep: Episode) -> None:
        """The table's columns are the episode's fields, in order (SCHEMA)."""
        row = astuple(ep)
        db.execute(f"INSERT OR REPLACE INTO episodes VALUES ({','.join('?' * len(row))})", row)

    def _changed(self, ep: Episode, who: str, action: str, detail: str) -> Episode:
        if self.on_change is not None:
            self.on_change(ep, who, action if not detail else f"{action}: {detail}")
        return ep

    def observe(self, event: AlertEvent) -> Episode | None:
        """An alert event from the rules service: a firing one opens (or updates) its
        episode; a resolved one marks the alert cleared (the episode stays with its owner)."""
        if event.state == "pending" or event.response is not None:
            return None
        now = self.now_ms()
        episode_id = f"{event.id}@{event.started}"
        crosses_at = event.forecast.crosses_at if event.forecast is not None else None
        with self._tx() as db:
            row = db.execute("SELECT * FROM episodes WHERE id = ?", (episode_id,)).fetchone()
            if row is None:
                if event.state != "firing":
                    return None
                first = self.escalation.chain(event.domain)[0].level
                ep = Episode(episode_id, event.id, event.rule, event.domain, event.district, event.device,
                             event.severity, event.message, "new", "firing", 0, first, None, now, now, None,
                             crosses_at)
                action, detail = "opened", f"{event.severity}: {event.message} (to {first})"
            else:
                old = Episode(*row)
                ep = replace(old, alert_state="resolved" if event.state == "resolved" else "firing",
                             severity=event.severity if event.state == "firing" else old.severity,
                             message=event.message, changed_at=now,
                             crosses_at=crosses_at if event.state == "firing" else None)
                action = "alert cleared" if event.state == "resolved" else "alert updated"
                detail = event.message
            self._save(db, ep)
            self._record(db, ep, "rules", action, detail)
        return self._changed(ep, "rules", action, detail)

    def _act(self, episode_id: str, who: str, action: str, change: Callable[[Episode], dict[str, Any]],
             detail: str) -> Episode:
        if not who.strip():
            raise DutyError("say who you are (the officer's name)")
        with self._tx() as db:
            row = db.execute("SELECT * FROM episodes WHERE id = ?", (episode_id,)).fetchone()
            if row is None:
                raise DutyError(f"no episode {episode_id!r}")
            old = Episode(*row)
            if old.state == "resolved":
                raise DutyError(f"episode {episode_id} is already resolved")
            ep = replace(old, **change(old), changed_at=self.now_ms())
            self._save(db, ep)
            self._record(db, ep, who, action, detail)
        return self._changed(ep, who, action, detail)

    def acknowledge(self, episode_id: str, who: str) -> Episode:
        return self._act(episode_id, who, "acknowledged", lambda old: {"state": "acknowledged",
                                                                       "owner": old.owner or who}, "")

    def assign(self, episode_id: str, who: str, to: str) -> Episode:
        if not to.strip():
            raise DutyError("say whom to assign it to")
        return self._act(episode_id, who, "assigned", lambda old: {"state": "acknowledged", "owner": to}, f"to {to}")

    def resolve(self, episode_id: str, who: str, note: str) -> Episode:
        if not note.strip():
            raise DutyError("resolving needs a note: what was found and done")
        return self._act(episode_id, who, "resolved", lambda old: {"state": "resolved", "note": note,
                                                                   "owner": old.owner or who}, note)

    def escalate_due(self) -> list[Episode]:
        """Move every unacknowledged critical episode up its chain as far as its age says."""
        now = self.now_ms()
        out = []
        for ep in self.open_episodes():
            if ep.state != "new" or ep.severity != "critical":
                continue
            chain = self.escalation.chain(ep.domain)
            level = max(i for i, step in enumerate(chain) if now - ep.opened_at >= step.after_s * 1000)
            if level <= ep.level:
                continue
            step = chain[level]
            detail = (f"to {step.level}: not acknowledged {int((now - ep.opened_at) / 1000)} s after it opened "
                      f"(limit {step.after_s:g} s)")
            out.append(self._act(ep.id, "escalation", "escalated", _raise_to(level, step.level), detail))
        return out

    def next_escalation_ms(self, ep: Episode) -> int | None:
        """When an unacknowledged critical episode climbs next (the console's timer)."""
        if ep.state != "new" or ep.severity != "critical":
            return None
        chain = self.escalation.chain(ep.domain)
        return ep.opened_at + int(chain[ep.level + 1].after_s * 1000) if ep.level + 1 < len(chain) else None


def _raise_to(level: int, name: str) -> Callable[[Episode], dict[str, Any]]:
    def change(_old: Episode) -> dict[str, Any]:
        return {"level": level, "level_name": name}

    return change


def episode_line(ep: Episode, who: str, action: str) -> str:
    """The change as a line of `alert_episodes`, for the record."""
    fields: dict[str, object] = {"episode": ep.id, "alert_id": ep.alert_id, "action": action, "who": who,
                                 "state": ep.state, "severity": ep.severity, "level": ep.level,
                                 "level_name": ep.level_name, "owner": ep.owner or ""}
    # one series per rule and device (bounded, like `alerts`): two devices' episodes opening
    # in the same millisecond are two points
    tags = {"domain": ep.domain, "district": ep.district, "rule": ep.rule}
    if ep.device:
        tags["device"] = ep.device
    return encode_point("alert_episodes", tags, fields, ep.changed_at)
