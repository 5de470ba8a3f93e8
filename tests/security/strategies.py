"""Hypothesis strategies shared by the bad-input tests: arbitrary JSON, valid wire-contract
values, and "nearly valid" ones (a valid shape with any part replaced by anything)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from urbansense.codec import INT64_MAX, INT64_MIN
from urbansense.identifiers import ID_PATTERN, MEASUREMENTS, METRIC_PATTERN, QUALITIES, RESERVED_FIELDS

identifiers = st.from_regex(ID_PATTERN.strip("^$"), fullmatch=True)
#: Valid field names: metric names other than the reserved ones (the ingester's own).
metric_names = st.from_regex(METRIC_PATTERN.strip("^$"), fullmatch=True).filter(lambda n: n not in RESERVED_FIELDS)
#: Strings that break naive parsers and escapers.
hostile_strings = st.sampled_from([
    "", " ", "\\", "\\\\", '"', "'", ",", "=", "a,b=c d", "line\nbreak", "\r\n", "\x00", "#comment",
    "trailing\\", "\\,", "\\ ", "\\=", "é", "\u2028", "\ufeff", "😀", "a" * 70, "time", "NaN", "-0",
    "1e309", "${HOME}", "$(id)", "../../etc/passwd", "\t", "null", "true",
])
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | hostile_strings
int64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | texts)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=20)
field_values = st.floats(allow_nan=False, allow_infinity=False) | int64 | st.booleans() | st.text(max_size=30)


@st.composite
def valid_samples(draw: st.DrawFn) -> dict[str, Any]:
    q = draw(st.sampled_from(QUALITIES))
    sample: dict[str, Any] = {"dev": draw(identifiers), "m": draw(st.sampled_from(MEASUREMENTS)),
                              "t": draw(st.integers(min_value=1, max_value=2**53)), "q": q}
    if q == "bad":
        sample["f"] = {}
        sample["err"] = draw(st.text(min_size=1, max_size=20))
    else:
        sample["f"] = draw(st.dictionaries(metric_names, field_values, min_size=1, max_size=4))
        if draw(st.booleans()):  # only an uncertain sample says why; a good one may carry ""
            sample["err"] = draw(st.text(max_size=20)) if q == "uncertain" else ""
    if draw(st.booleans()):
        sample["urgent"] = draw(st.booleans())
    return sample


@st.composite
def valid_batches(draw: st.DrawFn) -> dict[str, Any]:
    return {"v": 1, "gw": draw(identifiers), "district": draw(identifiers),
            "seq": draw(st.integers(min_value=0, max_value=INT64_MAX)),
            "sent": draw(st.integers(min_value=1, max_value=2**53)),
            "samples": draw(st.lists(valid_samples(), max_size=5))}


@st.composite
def nearly_valid(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid object with one key (at the top or inside one sample) replaced by anything,
    deleted, or an unknown key added."""
    obj = draw(base)
    target = obj
    samples = obj.get("samples")
    if samples and draw(st.booleans()):
        target = samples[draw(st.integers(0, len(samples) - 1))]
    if isinstance(target.get("f"), dict) and target["f"] and draw(st.booleans()):
        target = target["f"]
    keys = sorted(target)
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "add" or not keys:
        target[draw(texts)] = draw(json_values)
    elif action == "delete":
        del target[draw(st.sampled_from(keys))]
    else:
        target[draw(st.sampled_from(keys))] = draw(json_values | hostile_strings)
    return obj
