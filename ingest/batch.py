"""What travels from the batcher to the writers: lines plus the MQTT messages they came
from, which are acknowledged only after every line is stored (or dead-lettered)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import paho.mqtt.client as paho


@dataclass(slots=True)
class Delivery:
    """One MQTT message held by this instance, not yet acknowledged to the broker."""

    mid: int
    qos: int
    #: Connection it arrived on; after a reconnect the broker redelivers it with the same
    #: packet id, so an acknowledgement from the old connection must not be sent (the id
    #: may name another message by then).
    generation: int
    topic: str
    payload: bytes
    #: Dead letters about this message; acknowledged only after the broker has them.
    publishes: list[paho.MQTTMessageInfo] = field(default_factory=list)


@dataclass(slots=True)
class WriteBatch:
    """Entries joined by newlines make the write body. An entry is one line, or (index in
    `chunks`) many lines of one message joined by newlines, split only when InfluxDB
    refuses it and the refused line must be found."""

    lines: list[str] = field(default_factory=list)
    chunks: set[int] = field(default_factory=set)
    points: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    #: starts[i] is the index of the first entry of owners[i] (only messages with entries).
    starts: list[int] = field(default_factory=list)
    owners: list[Delivery] = field(default_factory=list)
    first_received: float = 0.0

    def add_line(self, line: str) -> None:
        self.lines.append(line)
        self.points += 1

    def add_chunk(self, chunk: str, points: int) -> None:
        self.chunks.add(len(self.lines))
        self.lines.append(chunk)
        self.points += points

    def discard_from(self, first_entry: int) -> None:
        """Drop the entries of a message refused after some were added."""
        for index in range(first_entry, len(self.lines)):
            entry = self.lines[index]
            self.points -= entry.count("\n") + 1 if index in self.chunks else 1
            self.chunks.discard(index)
        del self.lines[first_entry:]

    def add(self, delivery: Delivery, first_line: int) -> None:
        self.deliveries.append(delivery)
        if len(self.lines) > first_line:
            self.starts.append(first_line)
            self.owners.append(delivery)

    def owner_of(self, line_index: int) -> Delivery:
        return self.owners[bisect.bisect_right(self.starts, line_index) - 1]
