"""deploy/mosquitto's utility accounts are generated from the registry: they are current,
and one family more gives one account more, reading that family's alerts only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from application.cli import main
from urbansense import acl, registry
from urbansense.paths import BROKER_DEPLOY_DIR


def test_the_shipped_acl_and_accounts_are_current() -> None:
    for path, text in acl.render(BROKER_DEPLOY_DIR).items():
        assert path.read_text() == text, f"{path} is stale: run urbansense broker acl"
    for fam in registry.families().values():
        assert f"user {fam.utility}\ntopic read city/alerts/{fam.family}/#" in (BROKER_DEPLOY_DIR / "acl").read_text()


def test_the_check_fails_on_a_stale_file_and_the_command_fixes_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    deploy = tmp_path / "mosquitto"
    shutil.copytree(BROKER_DEPLOY_DIR, deploy)
    acl_file = deploy / "acl"
    acl_file.write_text(acl_file.read_text().replace("topic read city/alerts/water/#\n", ""))
    assert main(["broker", "acl", "--check", "--dir", str(deploy)]) == 1
    assert "the generated utilities differ from the families" in capsys.readouterr().out
    assert main(["broker", "acl", "--dir", str(deploy)]) == 0
    assert acl_file.read_text() == (BROKER_DEPLOY_DIR / "acl").read_text()


def test_a_file_without_the_markers_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "acl").write_text("user ops\ntopic read city/#\n")
    (tmp_path / "accounts").write_text("ops MQTT_PASSWORD_OPS\n")
    with pytest.raises(ValueError, match="no generated block"):
        acl.render(tmp_path)
