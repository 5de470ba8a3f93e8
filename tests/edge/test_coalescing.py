"""Coalesced polling (link `coalesce_ms`): devices that fall due together are read in one
pipelined exchange on a real loopback Modbus TCP simulator, each keeping its own sample,
errors and fallback."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from edge.link import ModbusLink
from edge.telemetry import SelfTelemetry
from tests.edge.conftest import METER_PROFILE, ModbusSim, tcp_links, unique, write_gateway, write_profile
from urbansense.config import ConfigError, load_gateway
from urbansense.schema import Sample

pytestmark = pytest.mark.integration


def _link(tmp_path: Path, sim: ModbusSim, profiles: list[dict[str, Any]] | None = None, *,
          interval_s: float = 0.5, unit_profiles: dict[int, str] | None = None, max_gap: int = 10,
          **link_opts: Any) -> tuple[ModbusLink, list[Sample]]:
    """The link over the simulator's first endpoint, built from a validated gateway config."""
    link_cfg = tcp_links(sim, **link_opts)[0]
    for dev in link_cfg["devices"]:
        dev["profile"] = (unit_profiles or {}).get(dev["unit"], dev["profile"])
    cfg = {"gateway": unique("gw"), "district": "test", "poll_interval_s": interval_s,
           "links": [link_cfg], "polling": {"backoff_min_s": 0.2, "backoff_max_s": 0.4, "max_gap": max_gap}}
    loaded = load_gateway(write_gateway(tmp_path, cfg, profiles))
    samples: list[Sample] = []
    link = ModbusLink(loaded.config.links[0], loaded.profiles, default_interval_s=interval_s,
                      polling=loaded.config.polling, sink=samples.append, telemetry=SelfTelemetry("gw"))
    return link, samples


async def _poll_once_each(link: ModbusLink) -> None:
    for state in link.devices.values():
        await link._poll_and_emit(state, time.monotonic())


async def _poll_as_group(link: ModbusLink) -> None:
    due = time.monotonic()
    await link._poll_group([(state, due) for state in link.devices.values()])


def test_a_coalesced_group_gives_the_same_samples_in_one_write(tmp_path: Path) -> None:
    with ModbusSim(write_gateway_profile(tmp_path), endpoints=1, units=6) as sim:
        sim.devices[(sim.ports[0], 3)].set("alarm", True)
        alone, alone_samples = _link(tmp_path / "a", sim, pipeline=True)
        together, group_samples = _link(tmp_path / "b", sim, pipeline=True, coalesce_ms=10)
        asyncio.run(_run_then_close(alone, _poll_once_each(alone)))
        segments = sum(ep.context.segments for ep in sim.endpoints)
        asyncio.run(_run_then_close(together, _poll_as_group(together)))
        group_segments = sum(ep.context.segments for ep in sim.endpoints) - segments
    assert group_segments == 1  # six devices' reads arrived in one segment
    assert together.master.requests == alone.master.requests == 6 * len(next(iter(alone.devices.values())).plan)
    assert [s.dev for s in group_samples] == [s.dev for s in alone_samples]
    for a, g in zip(alone_samples, group_samples, strict=True):
        assert (g.m, g.q, g.err, g.urgent) == (a.m, a.q, a.err, a.urgent)
        assert g.f.pop("poll_counter") == int(a.f.pop("poll_counter")) + 1  # the device served both
        assert g.f == a.f
    assert all(s.q == "good" for s in group_samples)
    assert [s.urgent for s in group_samples] == [False, False, True, False, False, False]


def test_a_silent_unit_in_a_group_is_bad_and_the_others_are_good(tmp_path: Path) -> None:
    with ModbusSim(write_gateway_profile(tmp_path), endpoints=1, units=4) as sim:
        sim.devices[(sim.ports[0], 2)].silent = True
        link, samples = _link(tmp_path, sim, pipeline=True, coalesce_ms=10)

        async def twice() -> None:
            await _poll_as_group(link)
            await _poll_as_group(link)

        asyncio.run(_run_then_close(link, twice()))
    # every poll of every device gives a sample, the silent one included: nothing lost
    assert [s.dev for s in samples] == [f"dev-0-{u}" for u in (1, 2, 3, 4)] * 2
    for s in samples:
        if s.dev == "dev-0-2":
            assert (s.q, s.err, s.f) == ("bad", "timeout", {})
        else:
            assert s.q == "good" and s.f["temp_c"] == pytest.approx(-3.5)
    assert link.devices["dev-0-2"].fail_streak == 2 and link.devices["dev-0-1"].fail_streak == 0


def test_the_scheduler_coalesces_and_a_silent_unit_does_not_stall_the_link(tmp_path: Path) -> None:
    """Run the link's own scheduler: the four devices (staggered by 25 ms of a 100-ms
    interval) fall in one 80-ms window, so they go out together; the silent one is
    reported bad on every retry while the others keep being polled."""
    with ModbusSim(write_gateway_profile(tmp_path), endpoints=1, units=4) as sim:
        sim.devices[(sim.ports[0], 4)].silent = True
        link, samples = _link(tmp_path, sim, interval_s=0.1, pipeline=True, coalesce_ms=80)

        asyncio.run(_run_for(link, 1.5))
        polls = link.telemetry.polls
        segments = sum(ep.context.segments for ep in sim.endpoints)
    healthy = [s for s in samples if s.dev != "dev-0-4"]
    assert {s.dev for s in healthy} == {"dev-0-1", "dev-0-2", "dev-0-3"}
    assert all(s.q == "good" for s in healthy)
    assert len(healthy) >= 3 * 5
    silent = [s for s in samples if s.dev == "dev-0-4"]
    assert silent and all(s.q == "bad" for s in silent)
    assert segments < polls  # several devices per exchange


def test_a_scan_class_without_pipelining_polls_one_after_another(tmp_path: Path) -> None:
    """`coalesce_ms` on a link that takes one request at a time: the devices due in the
    window are polled in the same turn of the scheduler, one after another (polled early:
    negative jitter), each answer before the next request; a silent one is bad each time
    and the others are not held up beyond its time-out."""
    with ModbusSim(write_gateway_profile(tmp_path), endpoints=1, units=4) as sim:
        sim.devices[(sim.ports[0], 4)].silent = True
        link, samples = _link(tmp_path, sim, interval_s=0.2, coalesce_ms=200, timeout_s=0.05)

        asyncio.run(_run_for(link, 1.5))
        segments = sum(ep.context.segments for ep in sim.endpoints)
    healthy = [s for s in samples if s.dev != "dev-0-4"]
    assert {s.dev for s in healthy} == {"dev-0-1", "dev-0-2", "dev-0-3"}
    assert all(s.q == "good" for s in healthy) and len(healthy) >= 3 * 5
    assert all(s.q == "bad" for s in samples if s.dev == "dev-0-4")
    assert segments == link.master.requests - link.telemetry.errors["timeout"]  # one request per segment
    assert min(link.telemetry.jitter_s) < -0.02  # devices polled ahead of their own slot


def test_an_illegal_address_in_a_group_falls_back_for_that_device_only(tmp_path: Path) -> None:
    wrong = copy.deepcopy(METER_PROFILE)
    wrong["profile"] = "wrong-meter"
    wrong["fields"].append({"name": "ghost", "table": "holding", "address": 40, "type": "uint16"})
    path = write_gateway_profile(tmp_path)
    with ModbusSim(path, endpoints=1, units=3, strict_map=True) as sim:
        # unit 2 is configured with a profile naming a register it does not have (no
        # merging across gaps: the strict simulator would refuse those for every unit)
        link, samples = _link(tmp_path, sim, [METER_PROFILE, wrong], unit_profiles={2: "wrong-meter"},
                              max_gap=0, pipeline=True, coalesce_ms=10)

        async def twice() -> None:
            await _poll_as_group(link)
            await _poll_as_group(link)

        asyncio.run(_run_then_close(link, twice()))
    # the first time in the group; then it is read one by one, after the group
    assert [s.dev for s in samples] == ["dev-0-1", "dev-0-2", "dev-0-3", "dev-0-1", "dev-0-3", "dev-0-2"]
    for s in samples:
        if s.dev == "dev-0-2":
            assert (s.q, s.err) == ("uncertain", "unreadable: ghost")
            assert "ghost" not in s.f and s.f["temp_c"] == pytest.approx(-3.5)
        else:
            assert s.q == "good"
    assert link.devices["dev-0-2"].one_by_one and not link.devices["dev-0-1"].one_by_one


def test_a_command_write_gets_the_link_between_groups(tmp_path: Path) -> None:
    with ModbusSim(write_gateway_profile(tmp_path), endpoints=1, units=4) as sim:
        link, samples = _link(tmp_path, sim, interval_s=0.05, pipeline=True, coalesce_ms=50)
        state = link.devices["dev-0-3"]
        spec = next(f for f in state.profile.fields if f.name == "setpoint_pct")

        async def write_while_polling() -> list[Any]:
            task = asyncio.create_task(link.run())
            read_back = []
            for value in (100, 200, 300, 400):  # raw words: setpoint_pct has scale 0.1
                await asyncio.sleep(0.1)
                read_back.append(await link.write_and_verify(state, spec, [value]))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return read_back

        read_back = asyncio.run(write_while_polling())
        device_words = sim.devices[(sim.ports[0], 3)].read("holding", 12, 1)
    assert read_back == pytest.approx([10, 20, 30, 40])
    assert device_words == [400]
    assert all(s.q == "good" for s in samples)
    assert samples[-1].dev and any(s.dev == "dev-0-3" and s.f.get("setpoint_pct") == pytest.approx(40)
                                   for s in samples)


@pytest.mark.parametrize(("opts", "message"), [
    ({"coalesce_ms": 5, "transport": "mqtt"}, "coalesce_ms is for Modbus links (tcp, rtu), not mqtt"),
    ({"coalesce_ms": -1, "pipeline": True}, "coalesce_ms"),
    ({"coalesce_ms": 5, "pipeline": True, "max_outstanding": 0}, "max_outstanding"),
])
def test_coalesce_is_for_modbus_links(tmp_path: Path, opts: dict[str, Any], message: str) -> None:
    cfg = {"gateway": "gw", "district": "test", "links": [
        {"name": "l", "transport": "tcp", "devices": [{"id": "d", "profile": "test-meter", "unit": 1}], **opts}]}
    with pytest.raises(ConfigError) as err:
        load_gateway(write_gateway(tmp_path, cfg))
    assert message in str(err.value)


# ---------------------------------------------------------------------------- helpers

async def _run_for(link: ModbusLink, seconds: float) -> None:
    """The link's own scheduler for a while, then cancelled."""
    task = asyncio.create_task(link.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def write_gateway_profile(tmp_path: Path) -> Path:
    return write_profile(tmp_path / "sim-profiles", METER_PROFILE)


async def _run_then_close(link: ModbusLink, work: Any) -> None:
    try:
        await work
    finally:
        await link.master.close()


#: A device with one read, nothing urgent and nothing reported by exception: a scan's
#: common poll, which takes `ModbusLink._plain_sample`.
PLAIN_PROFILE: dict[str, Any] = {
    **METER_PROFILE, "profile": "plain-meter",
    "fields": [{k: v for k, v in f.items() if k != "urgent"} for f in METER_PROFILE["fields"]
               if f["table"] == "holding" and f["address"] <= 6],
}


def test_a_plain_device_in_a_scan_takes_the_short_path_to_the_same_sample(tmp_path: Path) -> None:
    """From its second poll on, a device that answers, with one read and nothing urgent or
    reported by exception, gets its sample without the general layers: the same fields,
    quality and flags as the general path gives."""
    with ModbusSim(write_profile(tmp_path / "sim-profiles", PLAIN_PROFILE), endpoints=1, units=4) as sim:
        sim.devices[(sim.ports[0], 2)].set("alarm", True)
        sim.devices[(sim.ports[0], 3)].set("state", "fault")
        plain = {unit: PLAIN_PROFILE["profile"] for unit in range(1, 5)}
        alone, alone_samples = _link(tmp_path / "a", sim, [PLAIN_PROFILE], unit_profiles=plain, pipeline=True)
        together, group_samples = _link(tmp_path / "b", sim, [PLAIN_PROFILE], unit_profiles=plain, pipeline=True,
                                        coalesce_ms=10)
        short: list[bool] = []
        general = together._plain_sample

        def counted(*args: Any) -> Sample | None:
            sample = general(*args)
            short.append(sample is not None)
            return sample

        together._plain_sample = counted  # type: ignore[method-assign,assignment]

        async def twice(link: ModbusLink, poll: Any) -> None:
            await poll(link)
            await poll(link)

        asyncio.run(_run_then_close(alone, twice(alone, _poll_once_each)))
        asyncio.run(_run_then_close(together, twice(together, _poll_as_group)))
    assert short == [True] * 4  # the second scan; the first (no answer seen yet) goes the general way
    assert [s.dev for s in group_samples] == [s.dev for s in alone_samples]
    for a, g in zip(alone_samples, group_samples, strict=True):
        assert (g.m, g.q, g.err, g.urgent) == (a.m, a.q, a.err, a.urgent) == ("water", "good", None, False)
        assert isinstance(g.f.pop("poll_counter"), int) and isinstance(a.f.pop("poll_counter"), int)
        assert g.f == a.f
    assert [s.f["alarm"] for s in group_samples[4:]] == [False, True, False, False]
    assert [s.f["state"] for s in group_samples[4:]] == ["running", "running", "fault", "running"]
