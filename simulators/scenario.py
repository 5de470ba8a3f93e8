"""Scenarios: which gateways, which incidents and faults, when. And the network-free API
the rules engine's backtest and the dashboard tests consume:

    scenario = load_scenario("pudong-incidents")        # or a path to a YAML file
    for tick in scenario.play_offline(seed=1, start_ms=scenario.default_start_ms()):
        tick.t_ms, tick.batches                          # list[TelemetryBatch], per step
    truth = scenario.ground_truth(seed=1, start_ms=...)  # list of dicts (see README)

Every value is a pure function of (seed, device, event time), so the live simulator at
any --speed and play_offline agree, and the same seed gives identical readings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulators import daylight, noise
from simulators.faults import ActiveFault
from simulators.incidents import INCIDENT_TYPES, ActiveIncident
from simulators.scenario_file import (
    SCENARIOS_DIR,
    ParsedScenario,
    ScheduledEvent,
    free_tcp_ports,
    parse_scenario,
    resolve_scenario_path,
)
from simulators.world import SimDevice, World
from urbansense.config import LoadedGateway
from urbansense.schema import TelemetryBatch

__all__ = ["SCENARIOS_DIR", "Scenario", "ScheduledEvent", "Tick", "free_tcp_ports", "load_scenario",
           "resolve_scenario_path"]


@dataclass(slots=True)
class Tick:
    """One poll step: event time and the batches every edge agent publishes for it."""

    t_ms: int
    batches: list[TelemetryBatch]


@dataclass
class Scenario:
    name: str
    path: Path
    description: str
    duration_s: float
    step_s: float
    start_local: str | None
    speed: float
    #: The gateway config files the scenario uses (as shipped; see port_offset).
    gateways: list[Path]
    loaded: list[LoadedGateway]
    #: What the file fixes, and what each seed draws (see events_for).
    parsed: ParsedScenario
    port_offset: int = 0
    _worlds: dict[tuple[int, int], World] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ devices
    def events_for(self, seed: int) -> list[ScheduledEvent]:
        """The incidents and faults as seed `seed` plays them (a scenario may leave times,
        places and magnitudes to the seed)."""
        return self.parsed.events_for(seed)

    @property
    def randomised(self) -> bool:
        return bool(self.parsed.drawn)

    def loaded_for(self, seed: int) -> list[LoadedGateway]:
        """The gateways as seed `seed` plays them: without the devices it leaves out of the
        day (`absent:`), so the world, the rules' inventory and the edge agents agree."""
        absent = self.parsed.absent_for(seed)
        if not absent:
            return self.loaded
        out = []
        for g in self.loaded:
            config = g.config.model_copy(deep=True)
            for link in config.links:
                link.devices = [d for d in link.devices if d.id not in absent]
            config.links = [link for link in config.links if link.devices]
            out.append(g.model_copy(update={"config": config}))
        return out

    def device_count(self, protocol: str | None = None) -> int:
        return sum(1 for g in self.loaded for _link, d in g.config.devices()
                   if protocol is None or g.profiles[d.profile].protocol == protocol)

    def world(self, seed: int, start_ms: int) -> World:
        """Devices with their incidents and faults placed at start_ms (the last one is
        cached, so play_offline and ground_truth share it)."""
        key = (seed, start_ms)
        if key not in self._worlds:
            self._worlds.clear()
            self._worlds[key] = self.build_world(seed, start_ms)
        return self._worlds[key]

    def build_world(self, seed: int, start_ms: int) -> World:
        """A new world of its own (live mode: operator writes must not leak into the
        cached one that offline play uses)."""
        world = World(self.loaded_for(seed), seed, epoch_ms=start_ms)
        for ev in self.events_for(seed):
            start = start_ms + int(ev.at_s * 1000)
            end = start + int(ev.duration_s * 1000)
            if ev.kind == "incident" and INCIDENT_TYPES[ev.type].felt_by == "district":
                # weather (or a station's trip) as the rest of the district sees it
                district = world.devices[ev.devices[0]].district
                for dev in world.devices.values():
                    if dev.district == district and dev.id not in ev.devices:
                        dev.incidents.append(ActiveIncident(ev.type, start, end, dict(ev.params),
                                                            origin=ev.devices[0], group=tuple(ev.devices)))
            for member, dev_id in enumerate(ev.devices):
                dev = world.devices[dev_id]
                if ev.kind == "incident":
                    dev.incidents.append(ActiveIncident(ev.type, start, end, dict(ev.params), member,
                                                        len(ev.devices), group=tuple(ev.devices)))
                else:
                    fkey = noise.stream_key(seed, dev_id, "fault", ev.type, str(ev.at_s))
                    dev.faults.append(ActiveFault(ev.type, start, end, ev.metric, dict(ev.params), fkey,
                                                  epoch_ms=start_ms))
        return world

    # ------------------------------------------------------------------ time
    def default_start_ms(self, now_ms: int | None = None) -> int:
        """The latest start at the scenario's start_local (Shanghai) such that the
        scenario ends before `now_ms` (default: the wall clock), or now - duration when the
        scenario has no start_local."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        latest = now - int(self.duration_s * 1000)
        if self.start_local is None:
            return latest
        return self.aligned_start_ms(latest)

    def aligned_start_ms(self, not_after_ms: int) -> int:
        """The latest instant <= not_after_ms at the scenario's start_local time of day."""
        if self.start_local is None:
            return not_after_ms
        hh, mm = (int(x) for x in self.start_local.split(":")[:2])
        offset = (hh * 3600 + mm * 60) * 1000
        day = daylight.local_day(not_after_ms)
        start = day * daylight.DAY_MS - daylight.UTC_OFFSET_MS + offset
        if start > not_after_ms:
            start -= daylight.DAY_MS
        return start

    def ticks_ms(self, start_ms: int, step_s: float | None = None) -> Iterator[int]:
        step = int((step_s or self.step_s) * 1000)
        end = start_ms + int(self.duration_s * 1000)
        t = start_ms
        while t < end:
            yield t
            t += step

    # ------------------------------------------------------------------ offline play
    def play_offline(self, seed: int, start_ms: int, *, step_s: float | None = None) -> Iterator[Tick]:
        """The batches every gateway's edge agent would publish, one poll per step of
        event time (default: the scenario's `step`), without any sockets."""
        world = self.world(seed, start_ms)
        for dev in world.devices.values():
            dev.urgent_last.clear()
        seqs = {g.name: 0 for g in world.gateways}
        step_ms = int((step_s or self.step_s) * 1000)
        for t in self.ticks_ms(start_ms, step_s):
            batches: list[TelemetryBatch] = []
            for gw in world.gateways:
                samples = [s for d in gw.devices for s in (*d.backlog(t, step_ms), d.sample(t)) if s is not None]
                size = gw.loaded.config.batch.max_samples
                for i in range(0, len(samples), size):
                    seqs[gw.name] += 1
                    batches.append(TelemetryBatch(gw=gw.name, district=gw.district, seq=seqs[gw.name],
                                                  sent=t, samples=samples[i : i + size]))
            yield Tick(t, batches)

    # ------------------------------------------------------------------ ground truth
    def ground_truth(self, seed: int, start_ms: int) -> list[dict[str, Any]]:
        """Every incident and fault as a record (see simulators/README.md)."""
        world = self.world(seed, start_ms)
        records = []
        for ev in self.events_for(seed):
            devs = [world.devices[d] for d in ev.devices]
            start = start_ms + int(ev.at_s * 1000)
            end = start + int(ev.duration_s * 1000)
            gateways = sorted({d.gateway for d in devs})
            if ev.kind == "incident":
                itype = INCIDENT_TYPES[ev.type]
                domain = itype.domain
                crossed = self._hazard_crossed(ev, devs, start, end, start_ms)
            else:
                domain, crossed = devs[0].profile.measurement, None
            records.append({
                "kind": ev.kind,
                "type": ev.type,
                "domain": domain,
                "district": devs[0].district,
                "gateway": gateways[0] if len(gateways) == 1 else None,
                "device": None if ev.group else devs[0].id,
                "devices": [d.id for d in devs],
                "metric": ev.metric,
                "start": start,
                # From when an alert may warn of it: its precursor's start, if it has one.
                "warn_from": start - int(float(ev.params.get("precursor_s", 0.0)) * 1000),
                "end": end,
                # a device's own (its hazard_label) where the incident has one device
                "hazard_threshold": (INCIDENT_TYPES[ev.type].threshold_for(devs[0].spec.labels, ev.hazard_threshold)
                                     if ev.kind == "incident" and len(devs) == 1 else ev.hazard_threshold),
                "hazard_crossed_at": crossed,
                # A sensor's own failure: its health alerts detect it.
                **({"sensor": True} if ev.kind == "incident" and INCIDENT_TYPES[ev.type].sensor else {}),
                # Weather to live with (light rain): nothing to detect.
                **({"benign": True} if ev.kind == "incident" and INCIDENT_TYPES[ev.type].benign else {}),
                "params": dict(ev.params),
                # Where, for maps and for scoring group alerts (a circuit, a DMA, a tunnel).
                "location": _location(devs),
                "labels": _common_labels(devs),
                **({"note": ev.note} if ev.note else {}),
            })
        records.extend(self._emergent(world, start_ms))
        records.sort(key=lambda r: (r["start"], r["kind"], r["type"]))
        return records

    def _emergent(self, world: World, start_ms: int) -> list[dict[str, Any]]:
        """The episodes of the emergent incident kinds (a street flooding under the rain):
        wherever a device of the kind's profile passes its hazard threshold, from where its
        metric last left `onset` to where it is back there. Warnings may come from the start
        of the district-wide incident active at its onset (the rain behind it)."""
        step = int(self.step_s * 1000)
        end_ms = start_ms + int(self.duration_s * 1000)
        out: list[dict[str, Any]] = []
        for itype in INCIDENT_TYPES.values():
            if not itype.emergent:
                continue
            above = itype.hazard == "above"
            for dev in world.devices.values():
                if dev.profile.profile != itype.profile:
                    continue
                threshold = itype.threshold_for(dev.spec.labels, itype.hazard_threshold)
                assert threshold is not None
                onset = threshold + itype.onset_offset if itype.onset_offset is not None else float(itype.onset or 0)
                # a crossing a scheduled incident of the device's explains is that incident's
                own = [i for i in dev.incidents if not i.origin and INCIDENT_TYPES[i.type].metric == itype.metric]
                begun: int | None = None
                crossed: int | None = None
                for t in range(start_ms, end_ms + step, step):
                    values = dev.model.values(t, [i for i in dev.incidents if i.start_ms <= t]) \
                        if t < end_ms else None
                    v = float(values[itype.metric]) if values is not None else (onset - 1 if above else onset + 1)
                    past_onset = v > onset if above else v < onset
                    if past_onset and begun is None:
                        begun = t
                    if begun is not None and crossed is None and (v >= threshold if above else v <= threshold):
                        crossed = t
                    if not past_onset and begun is not None:
                        if crossed is not None and not any(i.start_ms <= crossed < i.end_ms for i in own):
                            out.append(self._emergent_record(itype.name, dev, begun, t, crossed, threshold))
                        begun = crossed = None
        return out

    @staticmethod
    def _emergent_record(kind: str, dev: SimDevice, start: int, end: int, crossed: int,
                         threshold: float) -> dict[str, Any]:
        behind = [i for i in dev.incidents if i.origin and i.start_ms <= start < i.end_ms + 3_600_000]
        warn_from = min([start, *(i.start_ms for i in behind)])
        itype = INCIDENT_TYPES[kind]
        return {
            "kind": "incident", "type": kind, "domain": itype.domain, "district": dev.district,
            "gateway": dev.gateway, "device": dev.id, "devices": [dev.id], "metric": itype.metric,
            "start": start, "warn_from": warn_from, "end": end, "hazard_threshold": threshold,
            "hazard_crossed_at": crossed, "params": {}, "location": _location([dev]),
            "labels": dict(dev.spec.labels), "note": "emerged from the simulated data",
        }

    def _hazard_crossed(self, ev: ScheduledEvent, devs: list[SimDevice], start: int, end: int,
                        start_ms: int) -> int | None:
        """First poll instant (on the scenario's step grid) at which the simulated value
        is past the hazard threshold."""
        itype = INCIDENT_TYPES[ev.type]
        if itype.hazard is None:
            return None
        step = int(self.step_s * 1000)
        first = start_ms + -(-(start - start_ms) // step) * step
        limits = {dev.id: itype.threshold_for(dev.spec.labels, ev.hazard_threshold) for dev in devs}
        for t in range(first, end, step):
            for dev in devs:
                threshold = limits[dev.id]
                if itype.hazard == "model":
                    inc = next(i for i in dev.incidents if i.type == ev.type and i.start_ms == start)
                    if dev.model.hazard(t, inc):
                        return t
                    continue
                if itype.hazard == "leak":
                    assert threshold is not None
                    inc = next(i for i in dev.incidents if i.type == ev.type and i.start_ms == start)
                    if inc.p("rate_m3h_per_h") * inc.elapsed_s(t) / 3600.0 >= threshold:
                        return t
                    continue
                values = dev.reading(t).values
                if values is None:
                    continue
                v = values.get(itype.metric)
                if v is None:
                    continue
                if itype.hazard == "true" and bool(v):
                    return t
                if itype.hazard == "above" and threshold is not None and float(v) >= threshold:
                    return t
                if itype.hazard == "below" and threshold is not None and float(v) <= threshold:
                    return t
        return None

    # ------------------------------------------------------------------ configs
    def write_gateway_configs(self, directory: Path, *, mqtt_port: int | None = None,
                              seed: int | None = None) -> list[Path]:
        """Write the gateway configs with this scenario's ports (port_offset applied) into
        `directory`, for edge agents to run against this simulator: uplink and MQTT links
        on `mqtt_port`, the edge's store-and-forward log in `directory`; with `seed`,
        without the devices that seed leaves out."""
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for g in self.loaded if seed is None else self.loaded_for(seed):
            raw = g.config.model_dump(mode="json", exclude_defaults=False)
            raw["profiles_dir"] = str((g.path.parent / g.config.profiles_dir).resolve())
            # Each run gets its own store-and-forward log: the default one is shared per
            # gateway name, and a backlog from an earlier run would be replayed into this one.
            raw["wal"]["path"] = str((directory / f"{g.config.gateway}.wal").resolve())
            if mqtt_port is not None:
                raw["uplink"]["port"] = mqtt_port
                for link in raw["links"]:
                    if link["transport"] == "mqtt":
                        link["port"] = mqtt_port
            path = directory / g.path.name
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            out.append(path)
        return out


# ---------------------------------------------------------------------- helpers


def _location(devs: list[SimDevice]) -> dict[str, float] | None:
    """The device's location, or the centre of a group's."""
    points = [d.spec.location for d in devs if d.spec.location is not None]
    if not points:
        return None
    return {"lat": round(sum(p.lat for p in points) / len(points), 6),
            "lon": round(sum(p.lon for p in points) / len(points), 6)}


def _common_labels(devs: list[SimDevice]) -> dict[str, str]:
    """Labels every device of the event shares (a circuit's cabinet and circuit, ...)."""
    common = dict(devs[0].spec.labels)
    for d in devs[1:]:
        common = {k: v for k, v in common.items() if d.spec.labels.get(k) == v}
    return common


def load_scenario(path_or_name: str | Path, *, port_offset: int = 0,
                  port_map: Mapping[int, int] | None = None, free_ports: bool = False) -> Scenario:
    """Load a scenario file; a bare name means simulators/scenarios/<name>.yaml.

    Tests must not rely on the fixed ports of the shipped gateway configs: pass
    `port_offset` (added to every Modbus TCP port), `port_map` ({shipped: actual}), or
    `free_ports=True` (every shipped port gets a currently free loopback port).
    """
    p = parse_scenario(path_or_name, port_offset=port_offset, port_map=port_map, free_ports=free_ports)
    return Scenario(p.name, p.path, p.description, p.duration_s, p.step_s, p.start_local, p.speed,
                    p.gateway_paths, p.loaded, p, port_offset)
