"""docker-compose.yml, checked without Docker: images and builds, mounted files, ports,
dependencies, health checks, commands (parsed by our own CLI), and no secret in the repo."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from application.cli import build_parser
from urbansense.config import load_gateway

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = {n: s for n, s in SERVICES.items() if "build" in s}
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
    if line.strip() and not line.lstrip().startswith("#"))
ACCOUNTS = [line.split()[:2] for line in (REPO / "deploy/mosquitto/accounts").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "COOKIE")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (cond or {}).get("condition", "service_started") for name, cond in dep.items()}


def test_the_services_the_issue_asks_for_are_there() -> None:
    images = {n: s.get("image", "") for n, s in SERVICES.items()}
    assert images["mosquitto"].startswith("eclipse-mosquitto:2")
    assert images["influxdb"].startswith("influxdb:1.")
    assert images["grafana"].startswith("grafana/grafana")
    commands = {n: s.get("command", [])[:2] for n, s in OURS.items()}
    assert commands["ingest"] == ["ingest", "run"]
    assert commands["rules"] == ["rules", "run"]
    assert commands["sim-district"] == ["sim", "run"]
    assert sum(1 for c in commands.values() if c == ["edge", "run"]) >= 2
    assert _env(SERVICES["influxdb"])["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"


def test_every_service_has_an_image_or_a_build_that_exists() -> None:
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            build = svc["build"]
            context = REPO / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert context.is_dir() and dockerfile.is_file(), name


def test_dockerfile_copies_only_what_exists() -> None:
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    sources = [s for line in dockerfile.splitlines() if line.startswith("COPY") and "--from=" not in line
               for s in line.split()[1:-1]]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src


def test_the_image_build_has_every_file_the_package_ships() -> None:
    """urbansense/shipped/ links into firmware-configs/ and deploy/; the wheel built in the
    image has those files only if the Dockerfile copies them into the build stage."""
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    copied = [line.split()[-1] for line in dockerfile.splitlines() if line.startswith("COPY") and "--from=" not in line]
    shipped = REPO / "urbansense" / "shipped"
    links = [p for p in shipped.iterdir() if p.is_symlink()]
    assert links
    for link in links:
        target = link.resolve().relative_to(REPO).as_posix()
        assert any(target == c or target.startswith(c.rstrip("/") + "/") for c in copied), \
            f"{link.name} -> {target}: add 'COPY {Path(target).parent} {Path(target).parent}' to deploy/Dockerfile"


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
                assert not source.startswith("/"), f"{name}: absolute host path {source}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_ports_are_unique_and_shared_namespaces_publish_none() -> None:
    host_ports: dict[str, str] = {}
    for name, svc in SERVICES.items():
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            assert "ports" not in svc, f"{name} shares {mode}: ports belong to that service"
            assert mode.split(":", 1)[1] in _depends(svc), f"{name} must depend on {mode}"
        for mapping in svc.get("ports", []):
            parts = str(mapping).split(":")
            assert len(parts) >= 2, f"{name}: {mapping} publishes a random host port"
            host = ":".join(parts[:-1])
            assert host not in host_ports, f"{name} and {host_ports.get(host)} both publish {host}"
            host_ports[host] = name
            assert re.fullmatch(r"\d+", parts[-1]), f"{name}: container port {parts[-1]}"
    assert {"mosquitto", "grafana"} <= set(host_ports.values())


def test_dependencies_exist_are_acyclic_and_their_conditions_can_be_met() -> None:
    for name, svc in SERVICES.items():
        for dep, condition in _depends(svc).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy"
            if condition == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", f"{dep} is one-shot, restart must be no"
    # no cycles: a topological order exists
    remaining = {n: set(_depends(s)) for n, s in SERVICES.items()}
    while remaining:
        ready = [n for n, deps in remaining.items() if not deps & set(remaining)]
        assert ready, f"dependency cycle among {sorted(remaining)}"
        for n in ready:
            del remaining[n]


def test_services_that_use_the_broker_or_database_wait_for_them() -> None:
    for name, svc in OURS.items():
        text = " ".join(svc.get("command", []))
        deps = _depends(svc)
        if "mqtt://mosquitto" in text:
            assert deps.get("mosquitto") == "service_healthy", name
        if "http://influxdb" in text:
            assert deps.get("influxdb") == "service_healthy", name


def test_long_running_services_have_health_checks() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, name
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_our_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    for name, svc in OURS.items():
        argv = [re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", a) for a in svc["command"]]
        args = parser.parse_args(argv)  # SystemExit (a failure) on an unknown flag
        assert callable(args.func), name


def _host_path(svc: dict, path: str) -> Path:
    """A path inside the container, as the file in the repository a bind mount gives it."""
    for mount in svc.get("volumes", []):
        source, target = mount.split(":")[:2]
        if source.startswith(".") and path.startswith(target + "/"):
            return REPO / source / path[len(target) + 1:]
    raise AssertionError(f"{path} is not on a bind mount of the service")


def test_edge_agents_use_their_gateways_account_and_existing_configs() -> None:
    scenario = yaml.safe_load((REPO / "simulators/scenarios/pudong-incidents.yaml").read_text())
    edges = {n: s for n, s in OURS.items() if s["command"][:2] == ["edge", "run"]}
    configured = set()
    for name, svc in edges.items():
        command = svc["command"]
        config = _host_path(svc, command[command.index("--config") + 1])
        cfg = load_gateway(config).config
        configured.add(cfg.gateway)
        assert _env(svc)["URBANSENSE_MQTT_USERNAME"] == f"{cfg.district}/{cfg.gateway}", name
        assert svc["network_mode"] == "service:sim-district", name
    assert configured == set(scenario["gateways"]), "one edge agent per gateway of the scenario"


def test_every_mqtt_account_in_compose_has_a_password_entry() -> None:
    accounts = {user: var for user, var in ACCOUNTS}
    for name, svc in SERVICES.items():
        env = _env(svc)
        user = env.get("URBANSENSE_MQTT_USERNAME") or env.get("GRAFANA_MQTT_USERNAME")
        if user:
            assert user in accounts, f"{name}: MQTT account {user} missing in deploy/mosquitto/accounts"
            password = env.get("URBANSENSE_MQTT_PASSWORD") or env.get("GRAFANA_MQTT_PASSWORD", "")
            assert accounts[user] in password, f"{name}: password should come from {accounts[user]}"
    broker_env = _env(SERVICES["mosquitto"])
    for _user, var in accounts.items():
        assert var in broker_env, f"the broker needs {var} to hash it"
        assert var in ENV_EXAMPLE, f".env.example lacks {var}"


def test_no_secret_in_the_repository() -> None:
    for name, svc in SERVICES.items():
        for key, value in _env(svc).items():
            if any(w in key for w in SECRET_WORDS):
                assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", value), f"{name}: {key} is a literal"
    for key, value in ENV_EXAMPLE.items():
        if any(w in key for w in SECRET_WORDS):
            assert value == "change-me", f".env.example: {key} must be a placeholder"
    ignored = (REPO / "deploy/Dockerfile.dockerignore").read_text().split()
    assert ".env" in ignored


def test_every_variable_compose_uses_is_documented_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used, "compose reads its settings from .env"
    assert used <= set(ENV_EXAMPLE), sorted(used - set(ENV_EXAMPLE))


def test_grafana_gets_the_provisioning_the_maps_and_its_secrets() -> None:
    grafana = SERVICES["grafana"]
    targets = {m.split(":")[1] for m in grafana["volumes"]}
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards",
            "/etc/grafana/provisioning/alerting", "/usr/share/grafana/public/urbansense"} <= targets
    provisioning = "\n".join(p.read_text() for p in (REPO / "dashboards/provisioning").rglob("*.yaml"))
    env = _env(grafana)
    for var in set(re.findall(r"\$([A-Z][A-Z0-9_]+)", provisioning)):
        assert var in env, f"provisioning expands ${var}, grafana's environment lacks it"


@pytest.mark.parametrize("script", ["deploy/mosquitto/make-passwd.sh", "deploy/mosquitto/docker-entrypoint.sh",
                                    "deploy/rabbitmq/docker-entrypoint.sh"])
def test_scripts_mounted_into_containers_are_executable(script: str) -> None:
    path = REPO / script
    assert path.stat().st_mode & 0o111, f"chmod +x {script}"
    assert shlex.split(path.read_text().splitlines()[0]) == ["#!/bin/sh"]
    checked = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_alertmanager_posts_every_receiver_to_the_relay_which_publishes_it() -> None:
    """The shipped routing's webhooks name the compose `relay` service where it listens,
    and the relay's mounted config gives every receiver its city/notify topic."""
    from rules.relay import load_targets

    routing = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    relay = SERVICES["relay"]
    listen = relay["command"][relay["command"].index("--listen") + 1]
    for receiver in routing["receivers"]:
        assert receiver["webhook_configs"] == [
            {"url": f"http://relay:{listen.rsplit(':', 1)[1]}/hook/{receiver['name']}"}], receiver["name"]
    config = relay["command"][relay["command"].index("--config") + 1]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in relay["volumes"]}
    targets = load_targets(REPO / mounted[config], environ={})
    assert set(targets) == {r["name"] for r in routing["receivers"]}
    assert all([t.kind for t in ts] == ["mqtt"] for ts in targets.values())


# ---- the cluster profile (cluster mode on three RabbitMQ nodes)

CLUSTER = {n: s for n, s in SERVICES.items() if "cluster" in s.get("profiles", [])}
NODES = {n: s for n, s in CLUSTER.items() if s.get("image", "").startswith("rabbitmq:")}
#: The settings .env.example's comment gives for cluster mode.
CLUSTER_ENV = dict(line.lstrip("# ").split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if re.match(r"#\s+(COMPOSE_PROFILES|BROKER_\w+|GRAFANA_MQTT_BROKER_URL)=", line))


def _rabbit_conf(path: Path) -> dict[str, str]:
    return dict(tuple(part.strip() for part in line.split("=", 1))  # type: ignore[misc]
                for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


def test_the_cluster_profile_runs_three_rabbitmq_nodes_that_find_each_other() -> None:
    assert len(NODES) == 3
    hostnames = {s["hostname"] for s in NODES.values()}
    assert hostnames == set(NODES), "each node's hostname is its service name (its node name rabbit@<host>)"
    peers = {v for k, v in _rabbit_conf(REPO / "deploy/rabbitmq/compose.conf").items()
             if k.startswith("cluster_formation.classic_config.nodes.")}
    assert peers == {f"rabbit@{h}" for h in hostnames}
    for name, node in NODES.items():
        targets = {m.split(":")[1] for m in node["volumes"]}
        assert {"/etc/rabbitmq/enabled_plugins", "/var/lib/rabbitmq"} <= targets, name
        assert sum(t.startswith("/etc/rabbitmq/conf.d/") for t in targets) == 2, name
        assert node["entrypoint"][0] in targets, f"{name}: its entrypoint is mounted"
        assert "RABBITMQ_ERLANG_COOKIE" in _env(node) and "RABBITMQ_DEFAULT_PASS" in _env(node), name
    plugins = (REPO / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_mqtt" in plugins and "rabbitmq_management" in plugins
    # the nodes refuse anonymous MQTT; the cluster settings are the stack runner's (one file)
    assert _rabbit_conf(REPO / "deploy/rabbitmq/compose.conf")["mqtt.allow_anonymous"] == "false"
    shared = _rabbit_conf(REPO / "deploy/rabbitmq/conf.d/cluster.conf")
    assert shared["cluster_partition_handling"] == "pause_minority"
    assert shared["mqtt.durable_queue_type"] == "quorum"


def test_the_cluster_accounts_are_made_before_anything_uses_the_cluster() -> None:
    init = CLUSTER["rabbitmq-init"]
    assert init["command"][:2] == ["broker", "rabbitmq"] and init["restart"] == "no"
    assert {n for n, c in _depends(init).items() if c == "service_healthy"} == set(NODES)
    command = init["command"]
    hosts = {re.sub(r"^\w+://([^:/]+).*", r"\1", u) for flag in ("--management", "--amqp")
             for u in command[command.index(flag) + 1].split(",")}
    assert hosts == set(NODES)
    # the accounts and ACL it reads are the ones Mosquitto reads
    broker_dir = command[command.index("--dir") + 1]
    assert _host_path(init, f"{broker_dir}/accounts") == REPO / "deploy/mosquitto/accounts"
    assert _host_path(init, f"{broker_dir}/acl") == REPO / "deploy/mosquitto/acl"
    env = _env(init)
    for _user, var in ACCOUNTS:
        assert var in env, f"rabbitmq-init needs {var} to set that account's password"
    # every service that may use the cluster waits for the accounts, optionally outside the profile
    for name, svc in SERVICES.items():
        text = yaml.safe_dump({k: svc.get(k) for k in ("command", "environment", "healthcheck")})
        if "BROKER_MQTT_URL" in text or "GRAFANA_MQTT_BROKER_URL" in text:
            dep = (svc.get("depends_on") or {}).get("rabbitmq-init")
            assert dep is not None and dep["condition"] == "service_completed_successfully", name
            assert dep.get("required", True) is (name in CLUSTER), name


def test_the_default_services_do_not_need_the_cluster_profile() -> None:
    """Without the profile, compose starts no cluster service, so nothing else may require one."""
    for name, svc in SERVICES.items():
        if name in CLUSTER:
            continue
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep in CLUSTER:
                assert isinstance(cond, dict) and cond.get("required") is False, f"{name} requires {dep}"


def test_cluster_mode_settings_in_env_example_match_the_compose_cluster() -> None:
    assert CLUSTER_ENV["COMPOSE_PROFILES"] == "cluster"
    assert ENV_EXAMPLE["COMPOSE_PROFILES"] == "" and ENV_EXAMPLE["BROKER_AMQP_URLS"] == ""
    standby = CLUSTER["rules-2"]["command"]
    for flag, var in (("--mqtt", "BROKER_MQTT_URL"), ("--amqp", "BROKER_AMQP_URLS")):
        default = re.fullmatch(r"\$\{" + var + r":-(.*)\}", standby[standby.index(flag) + 1])
        assert default and default.group(1) == CLUSTER_ENV[var], flag
    hosts = {re.sub(r"^\w+://", "", u).split("?")[0].rsplit(":", 1)[0]
             for u in re.sub(r"^mqtt://", "", CLUSTER_ENV["BROKER_MQTT_URL"]).split(",")}
    assert hosts == set(NODES)
    assert "protocol=3.1.1" in CLUSTER_ENV["BROKER_MQTT_URL"]  # RabbitMQ before 3.13 has no MQTT 5
    # in cluster mode the always-on ingester and rules instance consume the queues too
    for name in ("ingest", "rules"):
        assert _env(SERVICES[name])["URBANSENSE_AMQP_URLS"] == "${BROKER_AMQP_URLS:-}", name


def test_the_duty_console_lets_in_only_the_officers_listed() -> None:
    """The duty service reads deploy/duty/officers and gets each officer's password
    variable from .env; its health check needs no sign-in."""
    from rules.officers import load_officers

    duty = SERVICES["duty"]
    command = duty["command"]
    officers_file = _host_path(duty, command[command.index("--officers") + 1])
    variables = [line.split()[1] for line in officers_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    env = _env(duty)
    for var in variables:
        assert var in env and var in ENV_EXAMPLE, var
    assert load_officers(officers_file, dict.fromkeys(variables, "x")).names
    assert "/healthz" in " ".join(duty["healthcheck"]["test"])
