"""One broker user per step: created (or given a new password) when its worker is deployed,
with exactly the permissions `topology.step_permissions` grants. The password lives only in
the worker's spec; the stored spec's URL carries no credentials."""

from __future__ import annotations

import urllib.parse
from dataclasses import asdict

from oih_dataplane import topology
from oih_dataplane.spec import StepSpec

from .management import Management, new_password, user_name


def with_credentials(url: str, user: str, password: str) -> str:
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))


def without_credentials(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    netloc = (parsed.hostname or "127.0.0.1") + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))


def with_new_password(management: Management, vhost: str, worker_url: str,
                      spec: StepSpec) -> StepSpec:
    """Create (or reset) the step's broker user and return the spec that logs in as it."""
    user = user_name(spec.flow_id, spec.step_id)
    password = new_password()
    management.put_user(user, password)
    management.set_permissions(vhost, user, topology.step_permissions(spec.flow_id, spec.step_id))
    return StepSpec.from_dict({**asdict(spec), "amqp_url": with_credentials(
        worker_url, user, password)})
