"""Partitioning by district (rules/partitions.py), without a broker: who owns a district,
when an instance gives one up, what a redelivered batch still brings."""

from __future__ import annotations

from collections import Counter

from rules.partitions import Membership, owner, to_give_up, unseen_samples
from urbansense.schema import Sample, TelemetryBatch

DISTRICTS = [f"district-{i}" for i in range(200)]


def test_owners_spread_and_an_added_member_takes_only_its_share() -> None:
    two = {d: owner(d, ["a", "b"]) for d in DISTRICTS}
    assert set(Counter(two.values()).values()) <= set(range(70, 131))  # about half each
    three = {d: owner(d, ["a", "b", "c"]) for d in DISTRICTS}
    moved = [d for d in DISTRICTS if two[d] != three[d]]
    assert all(three[d] == "c" for d in moved)  # only to the newcomer
    assert 40 <= len(moved) <= 95  # about a third
    assert {d: owner(d, ["c", "b", "a"]) for d in DISTRICTS} == three  # order of members does not matter


def test_a_district_is_given_up_only_to_an_owner_heard_after_it_was_taken() -> None:
    me = Membership("a", expire_s=3.5)
    mine = next(d for d in DISTRICTS if owner(d, ["a", "b"]) == "a")
    theirs = next(d for d in DISTRICTS if owner(d, ["a", "b"]) == "b")
    me.hear(Membership.message("b", []), now=10.0)
    # taken after b was last heard: b may have died (its queue came to us), keep it
    assert to_give_up({theirs: 11.0, mine: 11.0}, me, now=12.0) == []
    me.hear(Membership.message("b", []), now=12.5)  # b is alive after all
    assert to_give_up({theirs: 11.0, mine: 11.0}, me, now=13.0) == [theirs]
    assert to_give_up({theirs: 11.0}, me, now=20.0) == []  # b not heard for 7.5 s: gone
    me.hear(b"not json", now=21.0)
    me.hear(b'{"holds": []}', now=21.0)
    me.hear(Membership.message("a", [theirs]), now=21.0)  # our own announcement
    assert set(me.heard) == {"b"}


def test_a_redelivered_batch_keeps_only_what_the_look_back_did_not_give() -> None:
    batch = TelemetryBatch(gw="gw", district="d", seq=7, sent=5000, samples=[
        Sample("x", "water", t, {"pressure_mpa": 0.3}) for t in (1000, 2000, 3000)] + [
        Sample("y", "water", 1500, {"pressure_mpa": 0.3})])
    kept = unseen_samples(batch, {"x": 2000})
    assert [(s.dev, s.t) for s in kept.samples] == [("x", 3000), ("y", 1500)]
    assert (kept.gw, kept.seq, kept.sent) == ("gw", 7, 5000)
    assert unseen_samples(batch, {}) is batch
