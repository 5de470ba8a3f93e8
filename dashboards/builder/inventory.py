"""The device inventory for the city map, generated from the gateway configs.

Why static files and not coordinates in InfluxDB: a device's position is configuration
(firmware-configs/gateways/*.yaml), not telemetry. Writing it into every sample would
repeat two floats per reading forever; writing it once into a side measurement would go
stale the day a config changes. So `urbansense dashboards inventory` (run at deploy by
the compose service `grafana-inventory`, or by hand) turns the configs into two files
Grafana serves from its public folder (``public/urbansense/``, a folder of its own so
Grafana's built-in maps and gazetteers stay visible):

- ``urbansense-devices.json``: a *gazetteer* (Grafana's "lookup" location mode): the
  Geomap's alert layer looks each alert's ``device`` tag up in it;
- ``urbansense-devices.geojson``: every device as a point, drawn as the map's base layer,
  so a device that never reported is on the map too.

Worked example: device ``wp-0001`` (profile water-supply-point) of ``pd-gw-01`` in
``pudong`` at 31.2304 N 121.5050 E becomes the gazetteer entry
``{"key": "wp-0001", "latitude": 31.2304, "longitude": 121.505, "name": "wp-0001 ..."}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urbansense.config import ConfigError, load_gateway
from urbansense.paths import GATEWAYS_DIR

GAZETTEER_FILE = "urbansense-devices.json"
GEOJSON_FILE = "urbansense-devices.geojson"
#: Where Grafana serves them from (mounted there by docker-compose.yml).
MAPS_URL_DIR = "public/urbansense"
GAZETTEER_PATH = f"{MAPS_URL_DIR}/{GAZETTEER_FILE}"
GEOJSON_PATH = f"{MAPS_URL_DIR}/{GEOJSON_FILE}"


@dataclass(frozen=True, slots=True)
class InventoryDevice:
    device: str
    gateway: str
    district: str
    profile: str
    measurement: str
    lat: float
    lon: float
    labels: dict[str, str] = field(default_factory=dict)


def load_inventory(gateways_dir: Path = GATEWAYS_DIR) -> list[InventoryDevice]:
    """Every device with a location, from every gateway config in `gateways_dir`.

    Device ids must be unique across the city: the map and the alerts name a device by
    its id alone (the `alerts` measurement has no gateway tag)."""
    devices: list[InventoryDevice] = []
    seen: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(gateways_dir.glob("*.yaml")):
        gw = load_gateway(path)
        cfg = gw.config
        for link in cfg.links:
            for dev in link.devices:
                if dev.id in seen:
                    problems.append(f"{path.name}: device {dev.id!r} is also in {seen[dev.id]}\n"
                                    "  fix: device ids must be unique across the city (the map and "
                                    "the alerts name a device by its id)")
                    continue
                seen[dev.id] = path.name
                if dev.location is None:
                    continue  # no position: listed in tables, not on the map
                devices.append(InventoryDevice(
                    device=dev.id, gateway=cfg.gateway, district=cfg.district, profile=dev.profile,
                    measurement=gw.profiles[dev.profile].measurement,
                    lat=dev.location.lat, lon=dev.location.lon, labels=dict(dev.labels)))
    if problems:
        raise ConfigError(problems)
    return devices


def _name(d: InventoryDevice) -> str:
    return f"{d.device} ({d.profile}, {d.gateway}, {d.district})"


def gazetteer(devices: list[InventoryDevice]) -> list[dict[str, Any]]:
    """Grafana's gazetteer format (the worldmap point list): key, latitude, longitude, name."""
    return [{"key": d.device, "latitude": d.lat, "longitude": d.lon, "name": _name(d)} for d in devices]


def geojson(devices: list[InventoryDevice]) -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": d.device,
             "geometry": {"type": "Point", "coordinates": [d.lon, d.lat]},
             "properties": {"device": d.device, "gateway": d.gateway, "district": d.district,
                            "profile": d.profile, "domain": d.measurement, "name": _name(d),
                            **{f"label_{k}": v for k, v in d.labels.items()}}}
            for d in devices
        ],
    }


def write_inventory(out_dir: Path, devices: list[InventoryDevice]) -> list[Path]:
    """Write the gazetteer and the GeoJSON into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gaz = out_dir / GAZETTEER_FILE
    geo = out_dir / GEOJSON_FILE
    gaz.write_text(json.dumps(gazetteer(devices), indent=1) + "\n")
    geo.write_text(json.dumps(geojson(devices), indent=1) + "\n")
    return [gaz, geo]
