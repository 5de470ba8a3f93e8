"""mbpoll (libmodbus, an independent client) reads simulated devices and gets the values
their profiles promise, in every data type and word order the profiles use."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from simulators.runner import LiveSimulator
from simulators.scenario import load_scenario
from simulators.world import SimDevice
from tests.simulators.conftest import FIXED_NOW_MS, SEED
from urbansense import registers
from urbansense.config import FieldSpec

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("mbpoll") is None, reason="Debian package mbpoll not installed")]
_VALUE = re.compile(r"^\[(\d+)\]:\s+(\S+)", re.M)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveSimulator]:
    scenario = load_scenario("pudong-incidents", free_ports=True)
    sim = LiveSimulator(scenario, SEED, scenario.aligned_start_ms(FIXED_NOW_MS), serve_stations=False)
    sim.start()
    yield sim
    sim.stop()


def mbpoll(dev: SimDevice, *args: str) -> list[str]:
    cmd = ["mbpoll", "-m", "tcp", "-p", str(dev.link.port), "-a", str(dev.spec.unit), "-0", "-1", "-o", "1",
           *args, dev.link.host]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"
    return [v for _addr, v in _VALUE.findall(out.stdout)]


def read_with_mbpoll(dev: SimDevice, spec: FieldSpec) -> object:
    """One field, read the way an engineer would with mbpoll, decoded by hand."""
    table = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}[spec.table]
    addr = str(spec.address)
    order = spec.order_in(dev.profile)
    if spec.table in ("coil", "discrete"):
        return mbpoll(dev, "-t", table, "-r", addr)[0] == "1"
    if spec.type in ("float32", "int32", "uint32"):
        # mbpoll's 32-bit types: default little-endian word order (CDAB), -B big-endian (ABCD).
        assert order in ("ABCD", "CDAB"), "mbpoll reads only word orders ABCD and CDAB"
        kind = "float" if spec.type == "float32" else "int"
        text = mbpoll(dev, "-t", f"{table}:{kind}", "-r", addr, *(["-B"] if order == "ABCD" else []))[0]
        raw: float = float(text) if kind == "float" else int(text) & 0xFFFFFFFF
        if spec.type == "int32" and raw >= 1 << 31:
            raw -= 1 << 32
    else:
        word = int(mbpoll(dev, "-t", f"{table}:hex", "-r", addr)[0], 16)
        if spec.bit is not None:
            return bool((word >> spec.bit) & 1)
        if spec.type in ("bit", "bool"):
            return bool(word)
        raw = int(registers.decode(spec.type, [word], order))
    if spec.enum is not None:
        return spec.enum[int(raw)]
    if isinstance(raw, int) and spec.scale == 1.0 and spec.offset == 0.0:
        return raw
    return raw * spec.scale + spec.offset


@pytest.mark.parametrize("device", ["wp-0101", "gs-0101", "md-0103", "lc-0105", "el-0102"])
def test_mbpoll_reads_what_the_profile_promises(live: LiveSimulator, device: str) -> None:
    dev = live.world.devices[device]
    truth = {r["type"]: r for r in live.scenario.ground_truth(SEED, live.start_ms)}
    # During the gas leak and the entrapment, with the day-burning lamp on: bits are set.
    t = int(truth["elevator_entrapment"]["start"]) + 60_000 if device.startswith(("el", "md")) \
        else int(truth["day_burning"]["start"]) + 60_000
    live.step(t)
    expected = dev.reading(t).values
    assert expected is not None
    for spec in dev.profile.fields:
        got = read_with_mbpoll(dev, spec)
        want = expected[spec.name]
        if isinstance(want, float):
            # mbpoll prints floats with 6 significant digits.
            assert math.isclose(float(got), want, rel_tol=6e-6, abs_tol=1e-6), (spec.name, got, want)  # type: ignore[arg-type]
        else:
            assert got == want, (spec.name, got, want)
    if device == "el-0102":
        assert expected["trapped_passenger"] is True and expected["fault_code"] == 12
    if device == "lc-0105":
        assert expected["lamp_on"] is True
