"""Modbus RTU and ASCII framing: on a serial line, and over TCP through a transparent
serial device server; and Modbus/TCP Security (TLS). The framings are checked against
the specification's examples and against pymodbus (an independent implementation):
our ASCII master against pymodbus' ASCII serial server, our serial-server simulator
against pymodbus' client with the RTU framer over TCP."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.framer import FramerType

from application.stack import Stack, free_port
from edge.link import make_master
from edge.modbus_pdu import ModbusLinkError, ModbusTimeout, read_request
from simulators.device import DeviceTables
from simulators.modbus_server import ModbusEndpoint, ThreadedModbusServer
from tests.edge.conftest import METER_PROFILE, AgentThread, Collector, RtuSim, unique, write_gateway
from urbansense import modbus_framing
from urbansense.config import LinkSpec, load_profile

pytestmark = pytest.mark.integration


def test_the_specification_examples() -> None:
    pdu = bytes.fromhex("0300000001")  # read one holding register at 0
    assert modbus_framing.rtu_frame(1, pdu) == bytes.fromhex("010300000001840A")
    assert modbus_framing.ascii_frame(1, pdu) == b":010300000001FB\r\n"
    assert modbus_framing.read_ascii(b":010300000001FB\r\n") == (1, pdu)
    assert modbus_framing.read_rtu(bytes.fromhex("010300000001840A")) == (1, pdu)
    with pytest.raises(modbus_framing.FramingError, match="LRC mismatch"):
        modbus_framing.read_ascii(b":010300000001FC\r\n")
    with pytest.raises(modbus_framing.FramingError, match="CRC mismatch"):
        modbus_framing.read_rtu(bytes.fromhex("010300000001840B"))


@pytest.fixture
def meter(meter_profile_dir: Path) -> DeviceTables:
    dev = DeviceTables(load_profile(meter_profile_dir / "test-meter.yaml"))
    dev.set("pressure_mpa", 0.45)
    return dev


@pytest.mark.parametrize("kind", ["rtu", "ascii"])
def test_agent_reads_devices_behind_a_serial_server(tmp_path: Path, stack: Stack, meter: DeviceTables,
                                                    meter_profile_dir: Path, kind: str) -> None:
    """Two units on the bus of a serial device server: one answers, one is silent; the
    silent one times out without costing the other its readings."""
    dead = DeviceTables(meter.profile)
    dead.silent = True
    port = free_port()
    server = ThreadedModbusServer([ModbusEndpoint("127.0.0.1", port, {1: meter, 2: dead}, framing=kind)])
    gw = unique("gw")
    cfg = {"gateway": gw, "district": "test", "poll_interval_s": 0.3, "batch": {"max_interval_s": 0.2},
           "links": [{"name": "serial-server", "transport": "tcp", "framing": kind, "port": port,
                      "timeout_s": 0.3, "devices": [{"id": "m-1", "profile": "test-meter", "unit": 1},
                                                     {"id": "m-2", "profile": "test-meter", "unit": 2}]}]}
    path = write_gateway(tmp_path, cfg, [METER_PROFILE])
    collector = Collector(stack.mqtt_url, f"city/test/{gw}/telemetry")
    server.start()
    try:
        with AgentThread(path, stack.mqtt_url, tmp_path / "wal"):
            deadline_samples = 4
            for _ in range(100):
                collector.drain(0.1)
                if len(collector.samples("m-1")) >= deadline_samples and collector.samples("m-2"):
                    break
    finally:
        server.stop()
        collector.close()
    good = collector.samples("m-1")
    assert len(good) >= 4 and all(s.q == "good" for s in good)
    assert good[-1].f["pressure_mpa"] == pytest.approx(0.45, rel=1e-6)
    assert all(s.q == "bad" and s.err == "timeout" for s in collector.samples("m-2"))


def test_our_serial_server_answers_pymodbus_rtu_over_tcp(meter: DeviceTables) -> None:
    port = free_port()
    server = ThreadedModbusServer([ModbusEndpoint("127.0.0.1", port, {7: meter}, framing="rtu")])
    server.start()
    try:
        client = ModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=2)
        assert client.connect()
        answer = client.read_holding_registers(2, count=2, device_id=7)
        client.close()
    finally:
        server.stop()
    assert not answer.isError()
    assert answer.registers == meter.read("holding", 2, 2)


async def _read(link: LinkSpec, unit: int) -> list[int]:
    from edge.modbus_pdu import parse_response
    master = make_master(link)
    try:
        request = read_request(unit, "holding", 2, 2)
        return parse_response(request, await master.transact(request, 1.0), 2)
    finally:
        await master.close()


def test_modbus_ascii_on_a_serial_line_against_pymodbus(pty_pair: tuple[str, str], meter: DeviceTables) -> None:
    import asyncio
    server_port, agent_port = pty_pair
    link = LinkSpec.model_validate({"name": "rs485", "transport": "rtu", "framing": "ascii",
                                    "serial": {"port": agent_port, "baudrate": 19200}})
    with RtuSim(server_port, {3: meter}, framer=FramerType.ASCII):
        assert asyncio.run(_read(link, 3)) == meter.read("holding", 2, 2)
        with pytest.raises(ModbusTimeout):
            asyncio.run(_read(link, 4))  # no unit 4 on the line


# ---------------------------------------------------------------------------- TLS
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    """A CA, a device certificate for 127.0.0.1 and a gateway (client) certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out",
             str(d / "ca.pem"), "-days", "2", "-subj", "/CN=test-ca")
    for name, extra in (("device", "subjectAltName=IP:127.0.0.1"), ("gateway", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"), "-out",
                 str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.pem"), "-days", "2",
                 "-extfile", str(d / f"{name}.ext"))
    yield d


def test_modbus_tcp_security_needs_both_certificates(pki: Path, meter: DeviceTables) -> None:
    import asyncio
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "device.pem"), str(pki / "device.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: the device checks the gateway too
    port = free_port()
    server = ThreadedModbusServer([ModbusEndpoint("127.0.0.1", port, {1: meter}, tls=ctx)])
    server.start()
    try:
        full = LinkSpec.model_validate({"name": "secure", "port": port, "tls": {
            "ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "gateway.pem"),
            "key_file": str(pki / "gateway.key")}})
        assert asyncio.run(_read(full, 1)) == meter.read("holding", 2, 2)
        plain = LinkSpec.model_validate({"name": "plain", "port": port})
        with pytest.raises((ModbusLinkError, ModbusTimeout)):
            asyncio.run(_read(plain, 1))  # Modbus TCP without TLS gets nothing
        stranger = LinkSpec.model_validate({"name": "stranger", "port": port, "tls": {"ca_file": str(pki / "ca.pem")}})
        with pytest.raises(ModbusLinkError, match=r"TLS|closed"):
            asyncio.run(_read(stranger, 1))  # no gateway certificate: refused
    finally:
        server.stop()


def test_bad_framing_combinations_are_refused() -> None:
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="pipeline needs Modbus TCP transaction ids"):
        LinkSpec.model_validate({"name": "x", "framing": "rtu", "pipeline": True})
    with pytest.raises(ValidationError, match="tls is Modbus/TCP Security"):
        LinkSpec.model_validate({"name": "x", "framing": "ascii", "tls": {"ca_file": "/x"}})
    with pytest.raises(ValidationError, match="serial line carries rtu or ascii"):
        LinkSpec.model_validate({"name": "x", "transport": "rtu", "framing": "mbap", "serial": {"port": "/dev/x"}})
