"""RabbitMQ's management HTTP API, with urllib: the per-step broker users and queue stats.

Why one broker user per step: a worker runs third-party component code. With its own user,
whose permissions come from `oih_dataplane.topology.step_permissions`, a compromised component can
publish only to its own flow's exchange and read only its own step's queue — never another
flow's or tenant's messages — and cannot declare or delete anything.

Users are addressed by name (`user_name(flow, step)`), never found by listing: listing every
user costs as much as the broker has users, and RabbitMQ 3.10 answers it with HTTP 500 when a
user is deleted while the list is built (one stop in a burst of 20 used to fail that way). Only
the reconciler's search for stray users lists them, and like every call it is retried with
back-off when the broker answers 5xx or the connection fails.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

#: Every step user's name starts with this, so strays can be found (and nothing else touched).
USER_PREFIX = "oih-flow-"


class ManagementError(RuntimeError):
    """The management API refused or failed a request."""


def user_name(flow_id: str, step_id: str) -> str:
    return f"{USER_PREFIX}{flow_id}.{step_id}"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def vhost_of(amqp_url: str) -> str:
    """The virtual host of an AMQP URL (`/%2F` → `/`; no path → `/`)."""
    path = urllib.parse.urlparse(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    def __init__(self, url: str, *, fallback_user: str = "", fallback_password: str = "",
                 timeout: float = 10.0, attempts: int = 6, first_delay: float = 0.2) -> None:
        parsed = urllib.parse.urlparse(url)
        user = urllib.parse.unquote(parsed.username or fallback_user)
        password = urllib.parse.unquote(parsed.password or fallback_password)
        netloc = parsed.hostname or "127.0.0.1"
        if parsed.port:
            netloc += f":{parsed.port}"
        self.base = f"{parsed.scheme or 'http'}://{netloc}{parsed.path.rstrip('/')}/api"
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout
        #: Tries of a call that fails transiently (5xx, no connection), the waits between them
        #: doubling from `first_delay` (0.2 s … 3.2 s: about 6 s in all).
        self.attempts = attempts
        self.first_delay = first_delay

    @classmethod
    def for_broker(cls, management_url: str, amqp_url: str) -> Management:
        amqp = urllib.parse.urlparse(amqp_url)
        return cls(management_url, fallback_user=amqp.username or "guest",
                   fallback_password=amqp.password or "guest")

    # --- users -------------------------------------------------------------------------

    def put_user(self, name: str, password: str) -> None:
        """Create the user, or set a new password (existing connections stay open)."""
        # No tags: a step user may not log into the management UI or API.
        self._call("PUT", f"/users/{_q(name)}", {"password": password, "tags": ""})

    def set_permissions(self, vhost: str, name: str, permissions: dict[str, str]) -> None:
        self._call("PUT", f"/permissions/{_q(vhost)}/{_q(name)}", permissions)

    def delete_user(self, name: str) -> None:
        """Delete the user (a missing one is fine). RabbitMQ closes its connections."""
        self._call("DELETE", f"/users/{_q(name)}", missing_ok=True)

    def users(self, prefix: str = USER_PREFIX) -> list[str]:
        return [u["name"] for u in self._call("GET", "/users") or []
                if u["name"].startswith(prefix)]

    def permissions(self, vhost: str, name: str) -> dict[str, str] | None:
        found = self._call("GET", f"/permissions/{_q(vhost)}/{_q(name)}", missing_ok=True)
        return None if found is None else {k: found[k] for k in ("configure", "write", "read")}

    # --- queues ------------------------------------------------------------------------

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        found = self._call("GET", f"/queues/{_q(vhost)}/{_q(name)}", missing_ok=True)
        return found if isinstance(found, dict) else None

    def queues(self, vhost: str, prefix: str) -> list[dict[str, Any]]:
        found = self._call("GET", f"/queues/{_q(vhost)}?columns=name,messages,"
                                  "messages_ready,messages_unacknowledged,consumers") or []
        return [q for q in found if q["name"].startswith(prefix)]

    # --- plumbing ----------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, *,
              missing_ok: bool = False) -> Any:
        """One API call, retried while the failure is transient. Every call we make is
        idempotent (PUT, DELETE of a name, GET), so repeating one is safe."""
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return self._call_once(method, path, body, missing_ok=missing_ok)
            except _Transient as error:
                if attempt == self.attempts:
                    raise ManagementError(str(error)) from None
                log.warning("RabbitMQ management API: %s; retrying in %.1fs", error, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _call_once(self, method: str, path: str, body: Any, *, missing_ok: bool) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (the configured management URL)
            self.base + path, data=data, method=method,
            headers={"authorization": self._auth, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404 and missing_ok:
                return None
            detail = error.read()[:500].decode(errors="replace")
            failure = f"{method} {path}: HTTP {error.code} {detail}"
            if error.code >= 500:
                raise _Transient(failure) from None
            raise ManagementError(failure) from None
        except (urllib.error.URLError, OSError) as error:
            raise _Transient(f"{method} {path}: {error}") from None
        return json.loads(raw) if raw else None


class _Transient(Exception):
    """A failure worth another try: the broker answered 5xx or could not be reached."""


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
