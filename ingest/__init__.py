"""Ingester: MQTT telemetry batches into InfluxDB, acknowledged only after the write.

Public surface (imported from their modules, so that `urbansense --help` stays fast):
`ingest.service.Ingester`, `ingest.settings.IngestSettings`,
`ingest.bootstrap.init_database`, and the CLI `urbansense ingest run | init`.
See ingest/README.md.
"""
