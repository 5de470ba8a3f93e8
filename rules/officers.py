"""The duty officers who may sign in to the duty console (rules/duty_service.py): one
officer per line of an officers file, `name PASSWORD_VARIABLE`, the password itself in the
environment (.env, a secret store), never in the file, as for the broker accounts
(deploy/mosquitto/accounts). With an officers file the console and its API answer only
officers who sign in (HTTP Basic; put TLS in front beyond one host), and every action is
recorded under the name they signed in with, not a name typed into the page.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from urbansense.config import ConfigError

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Officers:
    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._passwords = {name: password.encode() for name, password in passwords.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self._passwords)

    def signed_in(self, authorization: str | None) -> str | None:
        """The officer an `Authorization: Basic ...` header names, if the password is
        theirs; None otherwise (no header, another scheme, an unknown name, a wrong password)."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # an unknown name is compared too (against nothing), so timing does not tell names apart
        matches = hmac.compare_digest(password.encode(), self._passwords.get(name, b""))
        return name if sep and name in self._passwords and matches else None


def load_officers(path: Path, env: Mapping[str, str] | None = None) -> Officers:
    """The officers of `path` with their passwords from `env` (default: the process's)."""
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}\n  fix: create it, one 'name PASSWORD_VARIABLE' "
                           "per officer (docs/OPERATIONS.md, section 8)"]) from None
    passwords: dict[str, str] = {}
    problems: list[str] = []
    missing: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not NAME.fullmatch(parts[0]) or not VARIABLE.fullmatch(parts[1]):
            problems.append(f"{path}:{number}: '{line}' is not 'name PASSWORD_VARIABLE'\n  fix: a lower-case "
                            "name (letters, digits, . _ -) and the environment variable holding the password")
            continue
        name, variable = parts
        if name in passwords:
            problems.append(f"{path}:{number}: officer {name} is listed twice")
        elif not env.get(variable):
            missing.append(variable)
        else:
            passwords[name] = env[variable]
    if missing:
        problems.append(f"{path}: no password in the environment for {', '.join(missing)}\n  fix: set them "
                        "(e.g. in .env, see .env.example) and start again")
    if problems:
        raise ConfigError(problems)
    if not passwords:
        raise ConfigError([f"{path}: lists no officer\n  fix: add one 'name PASSWORD_VARIABLE' per officer"])
    return Officers(passwords)
