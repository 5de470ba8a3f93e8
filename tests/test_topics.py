from __future__ import annotations

import pytest

from urbansense import topics


def test_builders_and_parsers_agree() -> None:
    assert topics.telemetry("pudong", "pd-gw-01") == "city/pudong/pd-gw-01/telemetry"
    parsed = topics.parse_gateway_topic("city/pudong/pd-gw-01/cmd/result")
    assert (parsed.district, parsed.gateway, parsed.kind) == ("pudong", "pd-gw-01", "cmd/result")
    assert topics.alert("gas", "pudong", "warning") == "city/alerts/gas/pudong/warning"
    assert topics.parse_alert_topic("city/alerts/gas/pudong/warning") == topics.AlertTopic("gas", "pudong", "warning")


@pytest.mark.parametrize("bad", ["city/Pudong/gw/telemetry", "city/pudong/gw/telemetry/x", "town/a/b/telemetry",
                                 "city/alerts/gas/pudong/warning", "city/a"])
def test_parser_refuses(bad: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.parse_gateway_topic(bad)


def test_builders_refuse_bad_parts() -> None:
    with pytest.raises(topics.TopicError, match="district: 'pu/dong' is not a valid identifier"):
        topics.telemetry("pu/dong", "gw")
    with pytest.raises(topics.TopicError, match="domain must be one of"):
        topics.alert("sewer", "pudong", "warning")
    with pytest.raises(topics.TopicError, match="severity must be one of"):
        topics.alert("gas", "pudong", "panic")
