"""Shared fixtures: real Mosquitto and InfluxDB from the project's own stack runner.

`stack` is one private stack per test module (free loopback ports, a temp run dir): a
module never sees the broker sessions or shared-subscription members that another
module's ingesters left behind (Mosquitto keeps queueing a share of the stream for a
disconnected member with a persistent session).
Tests that stop or kill a service use `private_stack`, their own, so they never disturb
the others. Each test that writes data uses its own database name (`influx_db`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from application.stack import Stack
from urbansense.influx import InfluxClient


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"))
    s.up()
    yield s
    s.down()


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    s.up()
    yield s
    s.down()


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """Two Mosquittos of their own, as two nodes of a broker cluster (a URL naming both);
    either may be stopped or frozen (`pause`), and is thawed and stopped at the end."""
    first, second = Stack(tmp_path / "first"), Stack(tmp_path / "second")
    first.start("mosquitto")
    second.start("mosquitto")
    yield first, second
    for node in (first, second):
        node.resume("mosquitto")
        node.down()


@pytest.fixture
def influx_db(stack: Stack) -> Iterator[InfluxClient]:
    """A fresh, empty database on the session's InfluxDB."""
    name = "t_" + uuid.uuid4().hex[:12]
    client = InfluxClient(stack.influx_url, name)
    client.create_database()
    yield client
    client.query(f'DROP DATABASE "{name}"', database="")
    client.close()
