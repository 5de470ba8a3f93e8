"""The application layer: what runs the components together.

The umbrella CLI (`urbansense ...`), the local stack runner (private Mosquitto and
InfluxDB on free loopback ports), process supervision, the live demo, and scoring rules
against simulations (backtest, calendar sweep). It sits above the components (edge,
ingest, rules, simulators, dashboards), which import only the contract (urbansense);
`lint-imports` checks the layers (pyproject.toml).
"""
