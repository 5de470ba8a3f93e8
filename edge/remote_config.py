"""Remote configuration: a gateway config pushed over MQTT, checked, tried, and kept or
rolled back by the agent itself.

    city/{district}/{gateway}/config         (ops -> gateway)
        {"id": "cfg-7", "config": "<the gateway YAML>", "by": "alice"}
    city/{district}/{gateway}/config/result  (gateway -> ops)
        {"v": 1, "id": "cfg-7", "state": "trial", "ok": true, "hash": "3f2a9c0d11e4",
         "version": "2026-12-06.2", "trial_s": 120, "t": 1764190000123}

The version is the config's own `version:` text; the hash is of the text as pushed (the
same as of the file it came from). Both are in every status message of the gateway.

A push is checked as `edge check` checks a file (relative paths resolve as the running
config file's do) and refused with the reasons when it fails, or when it changes what the
agent cannot change while running (district, gateway, uplink, wal, batch, metrics: those
could cut the gateway off; they need a visit or a new unit). Else the agent swaps its
links (the log and the uplink stay: no buffered reading is lost) and runs the new config
on trial for the running config's `remote_config.trial_s`. At the end of the trial it keeps
the new config, or rolls back to the one before when the new one made the gateway worse:
no device delivered a reading while some did before, or more than `max_failing_fraction`
of the devices fail and more than before. Each step is answered on .../config/result
(state `refused`, `trial`, `kept` or `rolled_back`, with the reason).

What runs is kept in a folder beside the log (ConfigStore), so a restart runs the kept
config, and a restart during a trial (the new config crashed the agent) runs the one
before. Editing the config file on the gateway wins over any push: the store is dropped
when the file's hash differs from the one it was pushed over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from urbansense import codec
from urbansense.config import ConfigError, GatewayConfig, LoadedGateway, RemoteConfigSpec

log = logging.getLogger("urbansense.edge.config")

#: Sections a push may not change (the agent keeps them for as long as it runs).
FIXED_SECTIONS = ("district", "gateway", "uplink", "wal", "batch", "metrics")


class ConfigRefused(ValueError):
    pass


def config_hash(text: str) -> str:
    """The first 12 hex digits of the SHA-256 of a config's text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ConfigPush:
    id: str
    text: str
    by: str


def parse_push(payload: bytes) -> ConfigPush:
    try:
        raw = codec.loads(payload, "config push")
    except codec.PayloadError as exc:
        raise ConfigRefused(str(exc)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), str) or not raw["config"].strip():
        raise ConfigRefused('a config push is a JSON object {"id": "...", "config": "<the gateway YAML as text>"}')
    return ConfigPush(str(raw.get("id", ""))[:64], raw["config"], str(raw.get("by", ""))[:100])


def fixed_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    return [name for name in FIXED_SECTIONS if getattr(old, name) != getattr(new, name)]


def validate(push: ConfigPush, running: LoadedGateway) -> LoadedGateway:
    """The pushed config loaded and checked; ConfigRefused with every reason otherwise."""
    from edge.check import check  # edge.check imports the planner; only a push needs it

    try:
        report = check(running.path, push.text)
    except ConfigError as exc:
        raise ConfigRefused("the config does not load:\n" + "\n".join(exc.problems)) from None
    if report.problems:
        raise ConfigRefused("edge check finds problems:\n" + "\n".join(report.problems))
    changed = fixed_changes(running.config, report.gateway.config)
    if changed:
        raise ConfigRefused(f"the push changes {', '.join(changed)}, which a running agent keeps (a wrong uplink "
                            "or log would cut the gateway off); change them in the config file on the gateway")
    return report.gateway


@dataclass(frozen=True, slots=True)
class Health:
    """Devices with a verdict (polled devices always; pushing devices once they reported),
    those failing (a polled device that has not answered yet counts as failing) and those
    that delivered a good reading."""

    judged: int
    failing: int
    ok: int

    @property
    def failing_fraction(self) -> float:
        return self.failing / self.judged if self.judged else 0.0

    def __str__(self) -> str:
        return f"{self.failing} of {self.judged} device(s) failing"


def verdict(spec: RemoteConfigSpec, before: Health, after: Health, trial_s: float) -> str | None:
    """Why a trial failed, or None to keep the new config."""
    if after.judged and after.ok == 0 and before.ok > 0:
        return (f"no device delivered a reading in the {trial_s:g} s trial ({after}); before the change "
                f"{before.ok} did")
    if after.failing_fraction > spec.max_failing_fraction and after.failing_fraction > before.failing_fraction:
        return (f"{after} after the {trial_s:g} s trial ({after.failing_fraction:.0%}, above the limit of "
                f"{spec.max_failing_fraction:.0%}); before the change {before}")
    return None


def result(push_id: str, state: str, *, ok: bool, text: str, version: str | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"v": 1, "id": push_id, "state": state, "ok": ok, "hash": config_hash(text)}
    if version is not None:
        out["version"] = version
    out.update(extra)
    return out


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a power cut leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ConfigStore:
    """The config the agent runs at its next start, kept beside the log:
    `current.yaml` (what runs), `previous.yaml` (what ran before a trial), `state.json`
    ({"state": "trial" | "kept", "base_hash": the config file's hash the push was made over,
    "id": the push's})."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _state(self) -> dict[str, Any] | None:
        try:
            raw = json.loads((self.folder / "state.json").read_text(encoding="utf-8"))
            return raw if isinstance(raw, dict) else None
        except (OSError, ValueError):
            return None

    def _save(self, state: dict[str, Any]) -> None:
        _write(self.folder / "state.json", json.dumps(state))

    def begin_trial(self, push: ConfigPush, running_text: str, base_text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write(self.folder / "previous.yaml", running_text)
        _write(self.folder / "current.yaml", push.text)
        self._save({"state": "trial", "base_hash": config_hash(base_text), "id": push.id})

    def keep(self) -> None:
        state = self._state() or {}
        self._save({**state, "state": "kept"})

    def roll_back(self, previous_text: str) -> None:
        state = self._state() or {}
        _write(self.folder / "current.yaml", previous_text)
        self._save({**state, "state": "kept", "id": ""})

    def clear(self) -> None:
        for name in ("state.json", "current.yaml", "previous.yaml"):
            (self.folder / name).unlink(missing_ok=True)

    def startup(self, base_text: str) -> tuple[str, str | None]:
        """The config text to start with, and what to tell the operator about it (None when
        it is the config file as it is). A trial the agent did not live through is rolled back."""
        state = self._state()
        if state is None:
            return base_text, None
        if state.get("base_hash") != config_hash(base_text):
            self.clear()
            return base_text, "the config file changed since the last push; it runs, the pushed config is dropped"
        try:
            if state.get("state") == "trial":
                previous = (self.folder / "previous.yaml").read_text(encoding="utf-8")
                self.roll_back(previous)
                return previous, (f"the agent restarted during the trial of pushed config {state.get('id')!r}; "
                                  f"rolled back to the config before it ({config_hash(previous)})")
            current = (self.folder / "current.yaml").read_text(encoding="utf-8")
        except OSError as exc:
            self.clear()
            return base_text, f"the pushed config store {self.folder} is unreadable ({exc}); the config file runs"
        if current == base_text:
            return base_text, None
        return current, f"running the pushed config {config_hash(current)} kept in {self.folder}"
