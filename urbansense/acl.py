"""The broker's utility accounts, generated from the domain registry.

Each family's alerts go to ``city/alerts/<family>/<district>/<severity>``; the utility
that owns the family (its ``utility_account``, default ``utility-<family>``) may read
them and nothing else. deploy/mosquitto/acl and deploy/mosquitto/accounts hold the
generated lines between two marker comments; everything outside them is written by
hand. ``urbansense broker acl`` rewrites the blocks, ``--check`` says whether they are
current (make test runs the check).
"""

from __future__ import annotations

from pathlib import Path

from urbansense import registry, topics
from urbansense.config import ConfigError

BEGIN = "# ---- utilities: generated from the domain registry by `urbansense broker acl`; do not edit"
END = "# ---- end of the generated utilities"


def password_variable(account: str) -> str:
    return "MQTT_PASSWORD_" + account.upper().replace("-", "_")


def acl_block() -> list[str]:
    lines = ["# Each utility reads the alerts of its own family, in every district, and the",
             "# notifications Alertmanager routes to it (the relay's city/notify/<receiver>)."]
    for fam in registry.families().values():
        lines += ["", f"user {fam.utility}", f"topic read {topics.ROOT}/alerts/{fam.family}/#",
                  f"topic read {topics.ROOT}/notify/{fam.utility}"]
    return lines


def accounts_block() -> list[str]:
    return [f"{fam.utility:<20} {password_variable(fam.utility)}" for fam in registry.families().values()]


def with_block(text: str, block: list[str], shown: str) -> str:
    """`text` with the lines between the markers replaced by `block`."""
    lines = text.splitlines()
    try:
        start, end = lines.index(BEGIN), lines.index(END)
    except ValueError:
        raise ConfigError([f"{shown}: no generated block\n  fix: add the two marker lines\n  {BEGIN}\n"
                           f"  {END}"]) from None
    return "\n".join([*lines[: start + 1], *block, *lines[end:]]) + "\n"


def render(folder: Path) -> dict[Path, str]:
    """The acl and accounts files of a deploy/mosquitto folder, with current blocks."""
    out = {}
    for name, block in (("acl", acl_block()), ("accounts", accounts_block())):
        path = folder / name
        out[path] = with_block(path.read_text(encoding="utf-8"), block, str(path))
    return out
