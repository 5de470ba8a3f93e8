"""InfluxDB client over the v1-compatible HTTP API (`/write` line protocol, `/query` InfluxQL).

Why not `influxdb-client`: it speaks only `/api/v2`, which InfluxDB 1.x (Debian's 1.6.7)
does not serve; the v1 API is the one every InfluxDB version serves (2.x and 3.x as
their v1 compatibility API). Credentials come from the environment:
    URBANSENSE_INFLUX_USERNAME / URBANSENSE_INFLUX_PASSWORD   (1.x)
    URBANSENSE_INFLUX_TOKEN                                   (2.x / 3.x: "Authorization: Token ...")
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Any

import requests


class InfluxError(RuntimeError):
    def __init__(self, message: str, status: int = 0, body: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


@dataclass(slots=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=False)) for row in self.values]


class InfluxClient:
    def __init__(self, url: str, database: str = "city", *, retention_policy: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.timeout_s = timeout_s
        self._session = requests.Session()
        env = os.environ
        token = env.get("URBANSENSE_INFLUX_TOKEN")
        if token:
            self._session.headers["Authorization"] = f"Token {token}"
        elif env.get("URBANSENSE_INFLUX_USERNAME"):
            self._session.auth = (env["URBANSENSE_INFLUX_USERNAME"], env.get("URBANSENSE_INFLUX_PASSWORD", ""))

    def close(self) -> None:
        self._session.close()

    def ping(self) -> bool:
        try:
            return self._session.get(f"{self.url}/ping", timeout=2).status_code == 204
        except requests.RequestException:
            return False

    def write(self, lines: str | bytes, *, precision: str = "ms", compress: bool = True,
              database: str | None = None, compresslevel: int = 1) -> None:
        body = lines.encode() if isinstance(lines, str) else lines
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if compress:
            # level 1: line protocol still shrinks ~20:1, at a third of level 6's CPU
            body = gzip.compress(body, compresslevel=compresslevel)
            headers["Content-Encoding"] = "gzip"
        params = {"db": database or self.database, "precision": precision}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        try:
            resp = self._session.post(f"{self.url}/write", params=params, data=body,
                                      headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise InfluxError(f"InfluxDB at {self.url} unreachable: {exc}") from None
        if resp.status_code != 204:
            retry = resp.headers.get("Retry-After")
            raise InfluxError(
                f"InfluxDB write refused ({resp.status_code}): {resp.text.strip()[:500]}",
                status=resp.status_code, body=resp.text,
                retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
            )

    def query(self, q: str, *, database: str | None = None, epoch: str = "ms") -> list[Series]:
        try:
            resp = self._session.post(
                f"{self.url}/query",
                data={"q": q, "db": database or self.database, "epoch": epoch},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise InfluxError(f"InfluxDB at {self.url} unreachable: {exc}") from None
        if resp.status_code != 200:
            raise InfluxError(f"InfluxDB query failed ({resp.status_code}): {resp.text.strip()[:500]}",
                              status=resp.status_code, body=resp.text)
        out: list[Series] = []
        for result in resp.json().get("results", []):
            if "error" in result:
                raise InfluxError(f"InfluxDB query error: {result['error']} in {q!r}", status=400)
            for s in result.get("series", []):
                out.append(Series(s.get("name", ""), s.get("columns", []), s.get("values", []), s.get("tags", {})))
        return out

    def rows(self, q: str, **kwargs: Any) -> list[dict[str, Any]]:
        return [row for series in self.query(q, **kwargs) for row in series.rows()]

    def create_database(self, name: str | None = None) -> None:
        self.query(f'CREATE DATABASE "{name or self.database}"', database="")
