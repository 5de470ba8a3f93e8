"""`urbansense edge check`: validate a gateway config and its profiles before a site
visit. Every problem names the file, the key and the fix; warnings do not fail."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.planner import plan_reads, requests_per_field
from urbansense.config import LoadedGateway, Profile, load_gateway, profile_path, undeclared_fields


@dataclass
class CheckReport:
    #: The config as loaded (what the caller goes on with when there are no problems).
    gateway: LoadedGateway
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def _profile_file(gw: LoadedGateway, name: str) -> str:
    env = os.environ.get("URBANSENSE_PROFILES_DIR")
    local = Path(env) if env else (gw.path.parent / gw.config.profiles_dir).resolve()
    return str(profile_path(name, local) or name)


def _profile_checks(profile: Profile, shown: str, report: CheckReport) -> None:
    extra = undeclared_fields(profile)
    if extra:
        report.warnings.append(
            f"{shown}: fields {', '.join(extra)} are not declared by family {profile.measurement!r}: they are "
            "stored, but no dashboard, range or type knows them\n  fix: declare them under fields: in the "
            "family's family.yaml (docs/ADDING-A-FAMILY.md)")
    if profile.protocol != "modbus":
        return
    taken: dict[tuple[str, int], str] = {}
    for i, f in enumerate(profile.fields):
        assert f.address is not None
        if f.bit is not None:
            continue  # several bit fields may share one register
        for a in range(f.address, f.address + f.registers):
            other = taken.get((f.table, a))
            if other is not None:
                report.problems.append(
                    f"{shown}: fields[{i}].address: {f.name} overlaps {other} at {f.table} register {a}\n"
                    f"  fix: check both addresses and types in the datasheet ({f.type} takes {f.registers} "
                    "register(s))")
                break
            taken[(f.table, a)] = f.name
        if f.writable and f.type not in ("bit", "bool", "string") and (f.min is None or f.max is None):
            report.warnings.append(f"{shown}: fields[{i}]: writable {f.name} has no min/max\n"
                                   "  fix: set min and max so that a command cannot write a dangerous value")
        if f.deadband is not None and f.type in ("bit", "bool", "string"):
            report.warnings.append(f"{shown}: fields[{i}].deadband: ignored for a {f.type} field "
                                   "(it reports on every change)")


def check(path: Path | str, text: str | None = None) -> CheckReport:
    """Raises ConfigError for what the loader refuses; returns the deeper findings. With
    `text`, checks that config as if the file at `path` held it (a pushed config)."""
    gw = load_gateway(path, text)
    cfg = gw.config
    shown = str(path)
    report = CheckReport(gw)
    for name, profile in sorted(gw.profiles.items()):
        _profile_checks(profile, _profile_file(gw, name), report)
    endpoints: dict[tuple[str, int], str] = {}
    listening: dict[int, str] = {}
    for li, link in enumerate(cfg.links):
        where = f"{shown}: links[{li}]"
        if link.transport == "tcp":
            key = (link.host, link.port)
            if key in endpoints:
                report.problems.append(
                    f"{where}: link {link.name} uses {link.host}:{link.port} like link {endpoints[key]}\n"
                    "  fix: put both links' devices under one link: one endpoint is one connection and "
                    "one transaction queue")
            endpoints[key] = link.name
        if link.transport in ("hj212", "jt808"):
            if link.port in listening:
                report.problems.append(f"{where}: link {link.name} listens on port {link.port} like link "
                                       f"{listening[link.port]}\n  fix: give each hj212/jt808 link its own port")
            listening[link.port] = link.name
        if link.transport == "hj212" and link.password_env is None:
            report.warnings.append(f"{where}: hj212 link {link.name} has no password_env: any station password "
                                   "is accepted\n  fix: set password_env to the variable holding the stations' PW")
        if link.transport == "jt808" and link.auth_key_env is None:
            report.warnings.append(f"{where}: jt808 link {link.name} has no auth_key_env: a new key is drawn at "
                                   "each start and every terminal registers again\n  fix: set auth_key_env to "
                                   "the variable holding a long random secret")
        if link.tls is not None:
            tls_files = {"ca_file": link.tls.ca_file, "cert_file": link.tls.cert_file,
                         "key_file": link.tls.key_file}
            for tls_key, file in tls_files.items():
                if file and not Path(file).exists():
                    report.warnings.append(f"{where}.tls.{tls_key}: {file} does not exist on this machine (fine if "
                                           "the config is for another gateway)")
        if link.transport == "rtu" and link.serial is not None and not Path(link.serial.port).exists():
            report.warnings.append(f"{where}.serial.port: {link.serial.port} does not exist on this machine "
                                   "(fine if the config is for another gateway)")
        units: dict[int, str] = {}
        topics: dict[str, str] = {}
        for di, dev in enumerate(link.devices):
            profile = gw.profiles[dev.profile]
            if link.transport in ("tcp", "rtu"):
                if dev.unit == 0:
                    report.problems.append(f"{where}.devices[{di}].unit: 0 is the broadcast address; no device "
                                           "answers it\n  fix: set the device's own unit id, 1..247")
                if dev.unit in units:
                    report.problems.append(
                        f"{where}.devices[{di}].unit: {dev.id} and {units[dev.unit]} both use unit {dev.unit} on "
                        f"link {link.name}\n  fix: give each device on one link its own unit id")
                units[dev.unit] = dev.id
            elif profile.topic is not None:
                topic = profile.topic.replace("{device}", dev.id)
                if topic in topics:
                    report.problems.append(
                        f"{where}.devices[{di}]: {dev.id} and {topics[topic]} would both read {topic}\n"
                        f"  fix: put {{device}} in the topic of profile {profile.profile}")
                topics[topic] = dev.id
    p = cfg.polling
    if p.backoff_min_s > p.backoff_max_s:
        report.problems.append(f"{shown}: polling.backoff_min_s: {p.backoff_min_s} is above backoff_max_s "
                               f"{p.backoff_max_s}\n  fix: make backoff_min_s <= backoff_max_s")
    if cfg.uplink.reconnect_min_s > cfg.uplink.reconnect_max_s:
        report.problems.append(f"{shown}: uplink.reconnect_min_s: above reconnect_max_s\n"
                               "  fix: make reconnect_min_s <= reconnect_max_s")
    planned = per_field = 0
    for _link, dev in cfg.devices():
        profile = gw.profiles[dev.profile]
        if profile.protocol == "modbus":
            planned += len(plan_reads(profile.fields, max_gap=p.max_gap))
            per_field += requests_per_field(profile.fields)
    n = len(cfg.devices())
    report.summary.append(f"gateway {cfg.gateway} in {cfg.district}: {len(cfg.links)} link(s), {n} device(s), "
                          f"profiles: {', '.join(sorted(gw.profiles))}")
    if per_field:
        report.summary.append(f"Modbus reads per poll cycle: {planned} (one per field would be {per_field})")
    return report
