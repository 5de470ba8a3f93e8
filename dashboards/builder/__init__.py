"""Grafana for UrbanSense, built from code: the InfluxDB data source, the dashboards,
the alerting provisioning, the device inventory for the map, and the push to a running
Grafana.

The files Grafana loads live in ``dashboards/`` (written by ``urbansense dashboards
build``); a test runs every panel's query against a real InfluxDB (see
``urbansense.influxql`` for how Grafana's macros are expanded).
"""

from __future__ import annotations

#: The one data source every panel and alert rule names.
DATASOURCE_UID = "urbansense-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
#: Folder the dashboards and alert rules live in.
FOLDER_UID = "urbansense"
FOLDER_TITLE = "UrbanSense"
