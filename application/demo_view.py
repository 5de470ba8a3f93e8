"""The demo's live terminal view (rich): devices online per domain, readings/s ingested,
AQI per station in its colour, active alerts with forecast time to threshold, and a
scrolling event log. State is fed from MQTT callbacks and InfluxDB polls."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from urbansense.identifiers import MEASUREMENTS
from urbansense.schema import AlertEvent, TelemetryBatch

#: HJ 633-2012 levels: (upper AQI, name, colour)
AQI_LEVELS = ((50, "excellent", "green"), (100, "good", "yellow"), (150, "light", "dark_orange"),
              (200, "moderate", "red"), (300, "heavy", "purple"), (10**9, "severe", "dark_red"))
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def aqi_style(aqi: float) -> tuple[str, str]:
    for upper, name, colour in AQI_LEVELS:
        if aqi <= upper:
            return name, colour
    return AQI_LEVELS[-1][1], AQI_LEVELS[-1][2]


@dataclass
class DemoState:
    scenario: str
    speed: float
    start_ms: int
    end_ms: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    readings: int = 0
    readings_window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    devices: dict[str, dict[str, bool]] = field(default_factory=lambda: {m: {} for m in MEASUREMENTS})
    seen: set[tuple[str, int]] = field(default_factory=set)
    alerts: dict[str, AlertEvent] = field(default_factory=dict)
    events: list[AlertEvent] = field(default_factory=list)
    log: deque[Text] = field(default_factory=lambda: deque(maxlen=10))
    aqi: dict[str, tuple[float, str]] = field(default_factory=dict)
    event_now_ms: int = 0
    ingested: int = 0
    ingest_rate: float = 0.0
    #: Set when the scenario is over: later alerts come from the shutdown and are not shown.
    closed: bool = False
    #: Alert delivery and the duty book, as last polled (application/delivery.py).
    delivery: str = ""

    def on_batch(self, batch: TelemetryBatch) -> None:
        with self.lock:
            for s in batch.samples:
                self.seen.add((s.dev, s.t))
                self.devices.setdefault(s.m, {})[s.dev] = s.q != "bad"
                self.event_now_ms = max(self.event_now_ms, s.t)
            self.readings += len(batch.samples)

    def on_alert(self, event: AlertEvent) -> None:
        with self.lock:
            if self.closed:
                return
            self.events.append(event)
            if event.state == "resolved":
                self.alerts.pop(event.id, None)
            else:
                self.alerts[event.id] = event
            style = "green" if event.state == "resolved" else SEVERITY_STYLE.get(event.severity, "")
            stamp = time.strftime("%H:%M", time.localtime(event.t / 1000))
            self.log.append(Text(f"{stamp}  {event.state:<8} {event.severity:<8} {event.message}", style=style))

    def note(self, text: str, style: str = "dim") -> None:
        with self.lock:
            self.log.append(Text(text, style=style))

    def on_ingested(self, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.readings_window.append((now, total))
            self.ingested = total
            old = next((p for p in self.readings_window if now - p[0] <= 5.0), None)
            if old is not None and now > old[0]:
                self.ingest_rate = (total - old[1]) / (now - old[0])

    def render(self) -> Group:
        with self.lock:
            return Group(self._header(), self._middle(), self._alerts(), self._log())

    def _header(self) -> Panel:
        span = max(1, self.end_ms - self.start_ms)
        done = min(span, max(0, self.event_now_ms - self.start_ms))
        clock = time.strftime("%a %H:%M", time.localtime(self.event_now_ms / 1000)) if self.event_now_ms else "--"
        line = Text.assemble(
            (f"{self.scenario}", "bold"), f"  x{self.speed:g}   scenario time {clock}   ",
            (f"{self.readings:,}", "bold"), " readings published   ",
            (f"{self.ingested:,}", "bold"), f" in InfluxDB ({self.ingest_rate:,.0f}/s)")
        parts: list[Text | ProgressBar] = [line, ProgressBar(total=span, completed=done)]
        if self.delivery:
            parts.append(Text(self.delivery, style="dim"))
        return Panel(Group(*parts), title="UrbanSense live district", border_style="blue")

    def _middle(self) -> Table:
        grid = Table.grid(expand=True, padding=(0, 2))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        devices = Table(title="Devices online", expand=True)
        devices.add_column("domain")
        devices.add_column("online", justify="right")
        for m in MEASUREMENTS:
            states = self.devices.get(m, {})
            ok = sum(1 for v in states.values() if v)
            style = "green" if states and ok == len(states) else ("yellow" if ok else "dim")
            devices.add_row(m, Text(f"{ok}/{len(states)}", style=style))
        air = Table(title="Air quality (AQI, HJ 633-2012)", expand=True)
        air.add_column("station")
        air.add_column("AQI", justify="right")
        air.add_column("level")
        air.add_column("primary")
        for station, (aqi, primary) in sorted(self.aqi.items()):
            name, colour = aqi_style(aqi)
            air.add_row(station, Text(f"{aqi:.0f}", style=f"bold {colour}"), Text(name, style=colour), primary or "-")
        grid.add_row(devices, air)
        return grid

    def _alerts(self) -> Table:
        table = Table(title=f"Active alerts ({len(self.alerts)})", expand=True)
        for col in ("severity", "rule", "device", "value", "forecast", "since"):
            table.add_column(col)
        for ev in sorted(self.alerts.values(), key=lambda e: (e.severity != "critical", e.started))[:12]:
            eta = f"threshold in {ev.forecast.eta_s / 60:.0f} min" if ev.forecast else ""
            since = time.strftime("%H:%M", time.localtime(ev.started / 1000))
            value = "" if ev.value is None else f"{ev.value:g}"
            table.add_row(Text(ev.severity, style=SEVERITY_STYLE.get(ev.severity, "")), ev.rule,
                          ev.device or ev.district, value, eta, since)
        return table

    def _log(self) -> Panel:
        return Panel(Group(*self.log) if self.log else Text("waiting for events...", style="dim"),
                     title="Event log", border_style="dim")
