"""The database crashes under load and comes back: every service keeps running and serves
again without a restart, requests during the outage answer 503 at once (never hang, never a
500), what was stored before is intact, and a running flow keeps moving: every execution the
platform accepted reaches the sink.

The services keep their data in a private PostgreSQL cluster (one database each) that this
test starts, crashes (`pg_ctl stop -m immediate`: no shutdown checkpoint, every connection
cut) and starts again — never the system server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from oih_cli.broker import PrivateBroker
from oih_cli.platform import Platform
from oih_runtime.settings import DEFAULT_PORTS
from tests.e2e.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    E2E_SERVICES,
    auth,
    create_tenant_with_admin,
    login,
    platform_env,
    unique,
)
from tests.faults.postgres import PrivatePostgres
from tests.faults.support import (
    COMPONENTS,
    Load,
    arrived,
    builtin_components,
    start_flow,
    stop_flow,
    wait_arrived,
    wait_for,
    worker_pids,
)
from tests.gateway.conftest import free_port

pytestmark = pytest.mark.faults

OUTAGE_SECONDS = 12
#: A request that took longer than this hung (the REST client gives up after it).
CLIENT_TIMEOUT = 20.0
#: How long the services may take to serve again once the database is back.
RECOVERY_SECONDS = 60.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def db_platform(postgres: PrivatePostgres, broker: PrivateBroker,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    urls = {f"OIH_{service.upper()}_DATABASE_URL": postgres.create_database(f"oih_{service}")
            for service in E2E_SERVICES}
    running = Platform(
        data_dir=tmp_path_factory.mktemp("faults-db-platform"),
        gateway_port=free_port(),
        admin_port=free_port(),
        ports={name: free_port() for name in DEFAULT_PORTS},
        services=E2E_SERVICES,
        rabbitmq_url=broker.url,
        management_url=broker.management_url,
        extra_env={**platform_env(), **urls,
                   # Its own event exchange and queues on the shared private node.
                   "OIH_BUS_NAMESPACE": f"dbfault{uuid.uuid4().hex[:8]}"},
    )
    with running:
        yield running


@pytest.fixture(scope="module")
def db_rest(db_platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=db_platform.gateway_url, timeout=CLIENT_TIMEOUT) as client:
        yield client


def flow_body(components: dict[str, str]) -> dict[str, Any]:
    return {"display_name": unique("dbfault"), "graph": {
        "nodes": [{"id": "start", "component": components["trigger"], "function": "manual"},
                  {"id": "sink", "component": components["sink"], "function": "sink"}],
        "edges": [{"source": "start", "target": "sink"}]}}


@dataclass
class Answer:
    started: float  # monotonic
    what: str
    status: int  # 0: no answer (the client gave up or the connection failed)
    json: bool
    text: str = ""  # the body's start, or the client's error


@dataclass
class Requests:
    """Creates flows, reads one and lists them in a background thread until stopped,
    remembering every answer."""

    rest: httpx.Client
    token: str
    components: dict[str, str]
    kept: str
    answers: list[Answer] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Requests:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _call(self, what: str, method: str, path: str, body: Any = None) -> httpx.Response | None:
        started = time.monotonic()
        try:
            reply = self.rest.request(method, path, headers=auth(self.token), json=body)
        except httpx.HTTPError as error:
            self.answers.append(Answer(started, what, 0, False, repr(error)))
            return None
        is_json = reply.headers.get("content-type", "").startswith("application/json")
        self.answers.append(Answer(started, what, reply.status_code, is_json, reply.text[:300]))
        return reply

    def _run(self) -> None:
        while not self._stop.is_set():
            created = self._call("create", "POST", "/v1/flows", flow_body(self.components))
            if created is not None and created.status_code == 200:
                self.created.append(created.json()["name"])
            self._call("get", "GET", f"/v1/{self.kept}")
            self._call("list", "GET", "/v1/flows")
            self._stop.wait(0.1)


def service_pids(platform: Platform) -> dict[str, int]:
    return {name: child.pid for name, child in platform.children.items()}


def serves_again(rest: httpx.Client, token: str, kept: str, running: str) -> bool:
    """Every kind of call of the test answers 200 again."""
    try:
        return (rest.get(f"/v1/{kept}", headers=auth(token)).status_code == 200
                and rest.get("/v1/components", headers=auth(token)).status_code == 200
                and rest.get("/v1/secrets", headers=auth(token)).status_code == 200
                and rest.get(f"/v1/{running}/runtime", headers=auth(token)).status_code == 200
                and rest.post(f"/v1/{running}:execute", headers=auth(token),
                              json={"data": {"probe": True}}).status_code == 200)
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(300)
def test_a_database_crash_under_load_fails_requests_fast_and_every_service_recovers_by_itself(
        db_rest: httpx.Client, db_platform: Platform, postgres: PrivatePostgres) -> None:
    rest, platform = db_rest, db_platform
    token = create_tenant_with_admin(rest, login(rest, ADMIN, ADMIN_PASSWORD))[2]
    components = builtin_components(rest, token)
    work = rest.post("/v1/components", headers=auth(token), json={
        "display_name": "dbfault work", "access": "ACCESS_TENANT",
        "python_entry_point": {"object_reference": COMPONENTS}, "actions": [{"name": "work"}]})
    assert work.status_code == 200, work.text
    components["work"] = work.json()["name"]

    kept = rest.post("/v1/flows", headers=auth(token), json=flow_body(components))
    assert kept.status_code == 200, kept.text
    kept_name = kept.json()["name"]
    running = start_flow(rest, token, components, fields={"seconds": 0.005})
    workers = worker_pids(platform, running)
    pids = service_pids(platform)

    with Load(rest, token, [running], pause=0.05) as load, \
            Requests(rest, token, components, kept_name) as requests:
        wait_for(lambda: len(arrived(platform, running)) >= 10, 60, "messages at the sink")
        before = len(load.accepted[running])
        postgres.crash()
        assert not postgres.answers()
        down_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        up_at = time.monotonic()
        postgres.start()
        wait_for(lambda: serves_again(rest, token, kept_name, running), RECOVERY_SECONDS,
                 "every service to serve again")
        recovered_at = time.monotonic()
        time.sleep(3)  # load after the recovery too

    # During the outage: answers, quickly, and errors the caller may retry (503), never a 500.
    during = [a for a in requests.answers if down_at + 1 <= a.started < up_at]
    assert during, "no request was made while the database was down"
    assert all(a.status != 0 for a in requests.answers), \
        [a for a in requests.answers if a.status == 0]
    failed = [a for a in during if a.status != 200]
    assert any(a.what == "create" for a in failed), "creating flows cannot work without a database"
    assert all(a.status == 503 and a.json for a in failed), failed
    # Executions too were refused with 503 (or accepted): nothing hung, nothing was a 500.
    assert load.refusals and set(load.refusals) <= {503}, load.refusals

    # Afterwards: the same processes serve, nobody restarted them.
    assert platform.restarts == {}, platform.restarts
    assert service_pids(platform) == pids
    assert worker_pids(platform, running) == workers
    after = [a for a in requests.answers if a.started >= recovered_at]
    assert after and all(a.status == 200 for a in after), [a for a in after if a.status != 200]

    # What was stored before is intact, and new flows are stored.
    reread = rest.get(f"/v1/{kept_name}", headers=auth(token))
    assert reread.status_code == 200 and reread.json() == kept.json()
    made_after = [a for a in after if a.what == "create"]
    assert made_after
    for name in requests.created:
        assert rest.get(f"/v1/{name}", headers=auth(token)).status_code == 200

    # The running flow kept going: every accepted execution reached the sink.
    assert len(load.accepted[running]) > before
    wait_arrived(platform, running, load.accepted[running], 120)
    assert rest.get(f"/v1/{running}", headers=auth(token)).json()["state"] == "STATE_ACTIVE"
    stop_flow(rest, token, running)
