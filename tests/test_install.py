"""`pip install` of the checkout into a clean virtualenv, run from another folder: the
package carries everything its commands read (families, gateway configs, rules,
scenarios, dashboards, the broker's delivery settings), keeps its state in the user's
data directory, and the documented steps for a new family work from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


def test_an_installed_package_runs_outside_the_checkout(tmp_path: Path) -> None:
    # the wheel, built as pip builds it (setuptools, the optional C accelerator)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp_path / "dist"), str(REPO)])
    [wheel] = (tmp_path / "dist").glob("urbansense-*.whl")
    # a clean virtualenv; its dependencies are taken from this one (no network), not urbansense
    _run([sys.executable, "-m", "venv", str(tmp_path / "venv")])
    py = tmp_path / "venv" / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBANSENSE_")}
    env["HOME"] = str(home)
    env.pop("XDG_DATA_HOME", None)
    urbansense = str(tmp_path / "venv" / "bin" / "urbansense")

    where = _run([str(py), "-c", "import urbansense, ingest.points as p; from urbansense.paths import "
                  "ALERTMANAGER_CONF as am, RABBIT_CLUSTER_CONF as rc; "
                  "from rules.duty_service import CONSOLE as c; print(urbansense.__file__); "
                  "print(p.ACCELERATOR); "
                  "print(am.is_file() and (am.parent / 'templates' / 'urbansense.tmpl').is_file() and rc.is_file()); "
                  "print(all((c / f).is_file() for f in ('index.html', 'console.js', 'vendor/leaflet/leaflet.js', "
                  "'vendor/leaflet/leaflet.css', 'vendor/leaflet/LICENSE')))"],
                 cwd=elsewhere, env=env).stdout.splitlines()
    assert where[0].startswith(site) and where[1].startswith("C accelerator"), where
    assert where[2] == "True", ("the Alertmanager routing or the RabbitMQ cluster settings are not in the wheel "
                                "(urbansense/shipped/)")
    assert where[3] == "True", "the duty console's files are not in the wheel (rules/console/)"
    assert "ok:" in _run([urbansense, "rules", "check"], cwd=elsewhere, env=env).stdout
    assert "0 problems" in _run([urbansense, "dashboards", "check"], cwd=elsewhere, env=env).stdout
    truth = _run([urbansense, "sim", "truth", "--scenario", "pudong-incidents"], cwd=elsewhere, env=env).stdout
    assert len(truth.splitlines()) >= 11  # the shipped scenario, its gateways and families, from the wheel

    # the documented steps for a new family (docs/ADDING-A-FAMILY.md), on the installed package
    env["URBANSENSE_FAMILIES"] = str(REPO / "tests" / "data" / "families")
    trial = REPO / "tests" / "data" / "noise-trial"
    _run([urbansense, "edge", "check", "--config", str(trial / "nz-gw-noise.yaml")], cwd=elsewhere, env=env)
    # the gateway as a service, from the wheel (docs/OPERATIONS.md); install-service fails
    # when systemd-analyze verify has anything to say about the unit
    _run([urbansense, "edge", "install-service", "--config", str(trial / "nz-gw-noise.yaml"),
          "--unit-dir", str(tmp_path / "units")], cwd=elsewhere, env=env)
    [unit] = (tmp_path / "units").glob("urbansense-edge-*.service")
    assert f"ExecStart={urbansense} edge run --config {trial / 'nz-gw-noise.yaml'}" in unit.read_text()
    demo = _run([urbansense, "demo", "--headless", "--json", "--scenario", str(trial / "scenario.yaml"),
                 "--speed", "360"], cwd=elsewhere, env=env)
    summary = json.loads(demo.stdout)
    assert summary["verified"] and summary["readings_in_influxdb"] == summary["readings_published"] > 0
    assert [i["detected"] for i in summary["incidents"]] == [True] and summary["false_alarms"] == 0
    # state in the user's data directory, nothing in the checkout or the working folder
    assert (home / ".local" / "share" / "urbansense" / "demo" / "truth.jsonl").is_file()
    assert not any(elsewhere.iterdir())
