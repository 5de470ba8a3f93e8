"""The expected device inventory, from the gateway configs (firmware-configs/gateways).

It seeds the deadman rule (a device that never reports still alerts), gives lamps
their location (sun times) and their grouping labels (circuit, cabinet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from urbansense import paths
from urbansense.config import ConfigError, LoadedGateway, load_gateway

log = logging.getLogger("urbansense.rules")
GATEWAYS_DIR = paths.GATEWAYS_DIR


@dataclass(frozen=True, slots=True)
class InventoryDevice:
    district: str
    gateway: str
    device: str
    measurement: str
    lat: float | None = None
    lon: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: The fields its profile reads (empty: not known).
    fields: frozenset[str] = frozenset()


def from_gateways(gateways: list[LoadedGateway]) -> list[InventoryDevice]:
    out: list[InventoryDevice] = []
    for gw in gateways:
        cfg = gw.config
        for _link, dev in cfg.devices():
            prof = gw.profiles.get(dev.profile)
            out.append(InventoryDevice(
                district=cfg.district, gateway=cfg.gateway, device=dev.id,
                measurement=prof.measurement if prof is not None else "unknown",
                lat=dev.location.lat if dev.location else None,
                lon=dev.location.lon if dev.location else None,
                labels=dict(dev.labels),
                fields=frozenset(f.name for f in prof.fields) if prof is not None else frozenset(),
            ))
    return out


def load_inventory(paths: list[Path] | None = None, districts: set[str] | None = None, *,
                   strict: bool = True) -> list[InventoryDevice]:
    """Devices from gateway config files or folders (default: firmware-configs/gateways).

    With strict=False a broken config is logged and skipped, so one bad gateway file
    does not keep the engine from watching the others."""
    files: list[Path] = []
    for p in paths if paths is not None else [GATEWAYS_DIR]:
        files.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
    gateways: list[LoadedGateway] = []
    problems: list[str] = []
    for f in files:
        try:
            gateways.append(load_gateway(f))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems and strict:
        raise ConfigError(problems)
    if problems:
        log.error("gateway configs skipped for the inventory:\n  %s", "\n  ".join(problems))
    devices = from_gateways(gateways)
    return [d for d in devices if districts is None or d.district in districts]
