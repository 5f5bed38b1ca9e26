"""Push the volgraph dashboard and alert rules to a Grafana server with grafana-client.

What goes over the wire (tests/deploy/test_grafana.py serves a local HTTP server and checks it):
  GET  /api/folders/volgraph                          the folder exists? 404: POST /api/folders {uid, title}
  POST /api/dashboards/db                             {"dashboard": ..., "folderUid": ..., "overwrite": true}
  GET  /api/v1/provisioning/alert-rules/<uid>         per rule; 404: POST /api/v1/provisioning/alert-rules,
                                                      else PUT /api/v1/provisioning/alert-rules/<uid>
every request with `Authorization: Bearer <token>`. Running it twice changes nothing.

The token comes from the environment (GRAFANA_TOKEN, a service-account token with the Editor
role), never from a flag or a file. Translates only: the data comes from dashboards.py.
Never imports flows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from connectors.grafana import dashboards

TOKEN_ENV = "GRAFANA_TOKEN"


class ProvisionError(RuntimeError):
    """A step failed; the message names the step, what Grafana said and the fix."""


@dataclass
class ProvisionResult:
    folder_created: bool = False
    dashboard_url: Optional[str] = None
    rules_created: list[str] = field(default_factory=list)
    rules_updated: list[str] = field(default_factory=list)


def token_from_env(env: Optional[dict] = None) -> str:
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ProvisionError(f"${TOKEN_ENV} is not set: create a Grafana service account with the Editor role, "
                             f"add a token to it and export {TOKEN_ENV}=<token> before `volgraph grafana provision`")
    return token


def _client(url: str, token: str, timeout_s: float):
    from grafana_client import GrafanaApi  # imported here: `volgraph grafana render` needs no HTTP client

    return GrafanaApi.from_url(url=url, credential=token, timeout=timeout_s)


def _status(exc: Exception) -> Optional[int]:
    return getattr(exc, "status_code", None)


def _fail(step: str, url: str, exc: Exception) -> ProvisionError:
    code = _status(exc)
    if code in (401, 403):
        fix = f"the token in ${TOKEN_ENV} was refused ({code}): give its service account the Editor role, or make a new token"
    elif code is None:
        fix = f"could not reach Grafana at {url}: check --url (scheme, host, port) and that Grafana is running"
    else:
        fix = f"Grafana answered {code}: read its message above and the Grafana server log"
    return ProvisionError(f"{step}: {exc}; {fix}")


def provision(url: str, token: str, *, timeout_s: float = 10.0) -> ProvisionResult:
    """Create the folder if missing, overwrite the dashboard, create or update each alert rule."""
    from grafana_client.client import GrafanaClientError

    api = _client(url, token, timeout_s)
    result = ProvisionResult()
    try:
        api.folder.get_folder(dashboards.FOLDER_UID)
    except GrafanaClientError as exc:
        if _status(exc) != 404:
            raise _fail(f"reading folder {dashboards.FOLDER_UID!r}", url, exc) from None
        try:
            api.folder.create_folder(dashboards.FOLDER_TITLE, uid=dashboards.FOLDER_UID)
        except GrafanaClientError as exc2:
            raise _fail(f"creating folder {dashboards.FOLDER_UID!r}", url, exc2) from None
        result.folder_created = True
    except Exception as exc:  # connection refused, DNS, timeouts: niquests' own errors
        raise _fail("connecting", url, exc) from None

    try:
        answer = api.dashboard.update_dashboard({
            "dashboard": dashboards.dashboard(),
            "folderUid": dashboards.FOLDER_UID,
            "overwrite": True,
            "message": "volgraph grafana provision",
        })
    except Exception as exc:
        raise _fail(f"pushing dashboard {dashboards.DASHBOARD_UID!r}", url, exc) from None
    if isinstance(answer, dict):
        result.dashboard_url = answer.get("url")

    for rule in dashboards.api_alert_rules():
        uid = rule["uid"]
        try:
            api.alertingprovisioning.get_alertrule(uid)
            exists = True
        except GrafanaClientError as exc:
            if _status(exc) != 404:
                raise _fail(f"reading alert rule {uid!r}", url, exc) from None
            exists = False
        try:
            if exists:
                api.alertingprovisioning.update_alertrule(uid, rule)
                result.rules_updated.append(uid)
            else:
                api.alertingprovisioning.create_alertrule(rule)
                result.rules_created.append(uid)
        except Exception as exc:
            raise _fail(f"{'updating' if exists else 'creating'} alert rule {uid!r}", url, exc) from None
    return result
