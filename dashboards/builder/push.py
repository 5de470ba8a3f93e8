"""Upsert the dashboards into a running Grafana over its HTTP API (grafana-client).

The token comes from the environment (``GRAFANA_TOKEN``: a service-account token with
the Editor role), never from the command line, so it does not end up in shell history.
Provisioned files are the normal way in; `push` is for a Grafana you do not control the
files of (a managed Grafana, a colleague's instance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards.builder import FOLDER_TITLE, FOLDER_UID

TOKEN_ENV = "GRAFANA_TOKEN"


class PushError(RuntimeError):
    pass


@dataclass
class PushResult:
    folder_created: bool
    dashboards: list[str]  # uids, in push order


def token_from_env() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise PushError(f"no Grafana token: set {TOKEN_ENV} to a service-account token with the "
                        "Editor role (Grafana: Administration > Service accounts > Add token)")
    return token


def push(url: str, dashboards: dict[str, dict[str, Any]], token: str, *, timeout_s: float = 10.0,
         message: str = "urbansense dashboards push") -> PushResult:
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    try:
        created = _ensure_folder(api)
        pushed = []
        for model in dashboards.values():
            body = {"dashboard": {**model, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                    "message": message}
            api.dashboard.update_dashboard(body)
            pushed.append(model["uid"])
    except GrafanaClientError as exc:
        if exc.status_code in (401, 403):
            raise PushError(f"Grafana at {url} refused the token ({exc.status_code}): check "
                            f"{TOKEN_ENV} and that its service account has the Editor role") from None
        raise PushError(f"Grafana at {url} refused the request ({exc.status_code}): {exc.message}") from None
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url}: {exc}") from None
    except Exception as exc:  # connection errors come from niquests with varying types
        if type(exc).__module__.startswith(("niquests", "urllib3", "requests")):
            raise PushError(f"Grafana at {url} unreachable: {exc}") from None
        raise
    return PushResult(created, pushed)


def _ensure_folder(api: GrafanaApi) -> bool:
    try:
        api.folder.get_folder(FOLDER_UID)
        return False
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
    api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    return True
