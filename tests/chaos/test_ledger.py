"""The chaos runs' final check must be able to fail: it finds a reading missing from
InfluxDB, one stored that nobody published, one stored with another value, and a
device stored under two measurements."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.ledger import Key, compare_published, expected_fields, largest_gap_ms
from urbansense.influx import InfluxClient
from urbansense.schema import Sample

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

T0 = 1_764_190_000_000


def test_expected_fields_follow_the_wire_contract() -> None:
    assert expected_fields(Sample("wp-1", "water", T0, {"pressure_mpa": 0.31, "valve": True})) == {
        "pressure_mpa": 0.31, "valve": True}
    assert expected_fields(Sample("wp-1", "water", T0, {}, q="bad", err="timeout")) == {"device_error": "timeout"}
    assert expected_fields(Sample("wp-1", "water", T0, {"flow_m3h": 3}, q="uncertain")) == {
        "flow_m3h": 3, "quality_uncertain": True}


def test_compare_finds_missing_extra_wrong_and_twice_stored_readings(influx_db: InfluxClient) -> None:
    published: dict[Key, tuple[str, dict[str, Any]]] = {
        ("wp-1", T0): ("water", {"pressure_mpa": 0.31, "flow_m3h": 12}),
        ("wp-1", T0 + 15_000): ("water", {"pressure_mpa": 0.3125, "flow_m3h": 13}),
        ("wp-1", T0 + 30_000): ("water", {"device_error": "timeout"}),
        ("wp-2", T0): ("water", {"pressure_mpa": 0.29, "flow_m3h": 7}),
        ("md-1", T0): ("gas", {"methane_lel_pct": 1.5, "alarm": False}),
    }
    influx_db.write("\n".join([
        f"water,device=wp-1,district=d,gateway=g pressure_mpa=0.31,flow_m3h=12i {T0}",
        # a float that lost its last digits on the way
        f"water,device=wp-1,district=d,gateway=g pressure_mpa=0.312,flow_m3h=13i {T0 + 15_000}",
        f'water,device=wp-1,district=d,gateway=g device_error="timeout" {T0 + 30_000}',
        # wp-2 missing; md-1 stored twice (under two measurements); one nobody published
        f"gas,device=md-1,district=d,gateway=g methane_lel_pct=1.5,alarm=false {T0}",
        f"air,device=md-1,district=d,gateway=g methane_lel_pct=1.5,alarm=false {T0}",
        f"gas,device=md-9,district=d,gateway=g methane_lel_pct=0.5,alarm=false {T0}",
    ]))
    v = compare_published(published, influx_db, T0 - 1000)
    assert v.missing == [("wp-2", T0)]
    assert v.extra == [("md-9", T0)]
    assert v.duplicates == [("md-1", T0)]
    assert [w[0] for w in v.wrong_values] == [("wp-1", T0 + 15_000)]
    assert not v.exact
    assert v.per_device["wp-1"] == (3, 3) and v.per_device["wp-2"] == (1, 0)
    assert largest_gap_ms(influx_db, T0 - 1000)["wp-1"] == 15_000

    # and agrees when everything is there, exactly once
    exact = {k: val for k, val in published.items() if k[0] == "wp-1" and k[1] != T0 + 15_000}
    influx_db.query('DROP SERIES FROM "air"')
    influx_db.query("DELETE FROM \"water\" WHERE device = 'wp-1' AND time = " + f"{T0 + 15_000}ms")
    influx_db.query('DROP SERIES FROM "gas"')
    assert compare_published(exact, influx_db, T0 - 1000).exact
