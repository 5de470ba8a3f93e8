"""Signal models of the device families, keyed by profile name.

A model turns event time into engineering values for one device: `values(t_ms, incidents)`
where `incidents` are those of the device that started by `t_ms`. Models are pure
functions of time (see simulators/noise.py), so live and offline runs agree.

Which model a profile gets is the domain registry's say: a family's ``simulation:``
names a Python hook ("module:Class") where physics needs code (a water network, a
lift's state machine); every other profile is simulated from its data
(simulators/families/declarative.py).
"""

from __future__ import annotations

import importlib
from functools import cache

from simulators.families.base import DeviceContext, FamilyModel
from simulators.families.declarative import DeclarativeDevice
from urbansense import registry


def _import(hook: str) -> type[FamilyModel]:
    module, _, name = hook.partition(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, FamilyModel)):
        raise ImportError(f"simulation hook {hook!r} is not a simulators.families.base.FamilyModel "
                          "(write it as module:Class)")
    return cls


@cache
def models() -> dict[str, type[FamilyModel]]:
    """Profile name -> the Python model of every simulation hook in the registry."""
    return {profile: _import(hook) for fam in registry.families().values()
            for profile, hook in fam.simulation.items()}


def model_for(ctx: DeviceContext) -> FamilyModel:
    """The family model of a device's profile; profiles without a hook are declarative."""
    return models().get(ctx.profile.profile, DeclarativeDevice)(ctx)


__all__ = ["DeviceContext", "FamilyModel", "model_for", "models"]
