#!/usr/bin/env bash
# Installs what `make demo` and `make test` need when it is missing:
#   Debian packages mosquitto + influxdb (+ mbpoll for the Modbus interop test, socat for the
#   edge agent's Modbus RTU test over a pseudo-terminal pair, systemd for systemd-analyze, which
#   checks the edge agent's unit file, faketime to run an edge agent on a skewed clock,
#   prometheus-alertmanager with amtool for alert routing, prometheus with promtool for the
#   pipeline's health rules, chromium for the duty console's browser tests, rabbitmq-server for
#   cluster mode, iproute2 for the network namespaces of the cluster's partition test),
#   a Python >= 3.11 virtualenv in .venv, and this package with its dev extras.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto influxdb mbpoll socat openssl systemd faketime prometheus-alertmanager prometheus chromium
              rabbitmq-server iproute2)
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
command -v mbpoll >/dev/null 2>&1 || missing+=(mbpoll)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# the security tests make their TLS certificates with the openssl CLI
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# the edge service test verifies the unit file with systemd-analyze (no running systemd needed)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# the clock-health test runs an edge agent 5 minutes behind with libfaketime
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
# alerts are routed through Prometheus Alertmanager (its binary and amtool)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# the duty console is tested in a real browser: Debian's chromium, driven by Playwright
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# cluster mode runs on RabbitMQ's quorum queues (its MQTT plugin ships with the server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
# the partition test puts the cluster's nodes in network namespaces joined by veth pairs
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Start no system-wide service while installing (RabbitMQ's would listen on every
    # interface): a policy-rc.d that refuses, for the time of the install, unless one exists.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$policy_added" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  else
    echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
    echo "bootstrap: run this once, then try again:" >&2
    echo "    sudo apt-get install -y ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
fi
# UrbanSense never uses the packages' system-wide services: it runs its own private
# instances on free loopback ports.

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "bootstrap: Python >= 3.11 is required (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv || {
    echo "bootstrap: 'python3 -m venv' failed; on Debian install it with: apt-get install -y python3-venv" >&2
    exit 1
  }
fi
stamp=.venv/.urbansense-installed
# reinstall (and rebuild the optional C accelerator) when the build inputs change
want=$(cat pyproject.toml setup.py ingest/_fastline.c | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing urbansense and its dev extras into .venv"
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "bootstrap: pip install failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
