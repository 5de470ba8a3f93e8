"""Signal models of the five device families, one module each, keyed by profile name.

A model turns event time into engineering values for one device: `values(t_ms, incidents)`
where `incidents` are those of the device that started by `t_ms`. Models are pure
functions of time (see simulators/noise.py), so live and offline runs agree.
"""

from __future__ import annotations

from simulators.families.air import AirQualityStation
from simulators.families.base import DeviceContext, FamilyModel, GenericDevice
from simulators.families.elevator import ElevatorController
from simulators.families.gas import GasRegulatorStation, MethaneDetector
from simulators.families.lighting import LampController
from simulators.families.water import WaterSupplyPoint

MODELS: dict[str, type[FamilyModel]] = {
    "water-supply-point": WaterSupplyPoint,
    "gas-regulator-station": GasRegulatorStation,
    "methane-detector": MethaneDetector,
    "lamp-controller": LampController,
    "elevator-controller": ElevatorController,
    "air-quality-station": AirQualityStation,
}


def model_for(ctx: DeviceContext) -> FamilyModel:
    """The family model of a device's profile; profiles without one get nominal + noise."""
    return MODELS.get(ctx.profile.profile, GenericDevice)(ctx)


__all__ = ["MODELS", "DeviceContext", "FamilyModel", "model_for"]
