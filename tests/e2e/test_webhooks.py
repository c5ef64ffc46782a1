"""Webhooks end to end: HTTP through the real Envoy into the webhooks service, a real
orchestrator, real RabbitMQ and real worker processes, checked at the sink; HMAC keys are
secrets of the real Secrets service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from oih_cli.platform import Platform
from oih_webhooks import signatures
from tests.e2e.conftest import (
    RECEIVER_HOST,
    auth,
    create_tenant_with_admin,
    sink_lines,
    unique,
    wait_sink,
    wait_state,
)

KEY, PREVIOUS_KEY = b"current hook key", b"previous hook key"


def hmac_secret(rest: httpx.Client, token: str, key: bytes, grace: str = "3600s") -> str:
    """An HMAC key in the Secrets service (the webhooks service resolves it per request)."""
    created = rest.post("/v1/secrets", headers=auth(token), json={
        "display_name": unique("hook key"), "type": "TYPE_HMAC_KEY",
        "value": {"key": key.decode()}, "rotation_grace_period": grace})
    assert created.status_code == 200, created.text
    return str(created.json()["name"])


def hook_flow(rest: httpx.Client, token: str, builtins: dict[str, str], *,
              settings: dict[str, Any] | None = None, reply: dict[str, Any] | None = None,
              first: dict[str, Any] | None = None) -> str:
    """An ACTIVE flow: webhook trigger (or `first`) → [reply] → sink. The sink records
    data and metadata."""
    nodes: list[dict[str, Any]] = [first or {"id": "start", "component": builtins["trigger"],
                                             "function": "webhook"}]
    edges = []
    previous = nodes[0]["id"]
    if reply is not None:
        nodes.append({"id": "answer", "component": builtins["reply"], "function": "reply",
                      "fields": reply})
        edges.append({"source": previous, "target": "answer"})
        previous = "answer"
    nodes.append({"id": "sink", "component": builtins["sink"], "function": "sink"})
    edges.append({"source": previous, "target": "sink"})
    created = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("hooked"), "graph": {"nodes": nodes, "edges": edges},
        "webhook_settings": settings or {}})
    assert created.status_code == 200, created.text
    name = str(created.json()["name"])
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    return name


def hook(name: str) -> str:
    return f"/hooks/{name.removeprefix('flows/')}"


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("message"), str), body
    return body


# --------------------------------------------------------------------------- no auth, async

def test_a_webhook_post_reaches_the_sink_with_body_headers_query_and_suffix(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    body = b'{"order": 123456789012345678901234567890, "n": 21, "name": "K\xc3\xb6ln \xe2\x9c\x93"}'
    answer = rest.post(f"{hook(name)}/orders/new?source=shop&tag=a&tag=b", content=body,
                       headers={"content-type": "application/json", "x-shop": "berlin",
                                "authorization": "Bearer not-for-the-flow",
                                "cookie": "session=secret"})
    assert answer.status_code == 200, answer.text
    execution = answer.json()["execution"]
    assert execution.startswith(f"{name}/executions/")
    line = wait_sink(platform, name, "sink", 1)[0]
    assert line["execution_id"] == execution.rsplit("/", 1)[1]
    assert line["data"] == {"order": 123456789012345678901234567890, "n": 21,
                            "name": "Köln ✓"}
    assert isinstance(line["data"]["n"], int)
    meta = line["metadata"]
    assert meta["method"] == "POST" and meta["path_suffix"] == "orders/new"
    assert meta["query"] == {"source": "shop", "tag": ["a", "b"]}
    assert meta["content_type"] == "application/json"
    assert meta["headers"]["x-shop"] == "berlin"
    # Credentials never reach the flow.
    assert "authorization" not in meta["headers"] and "cookie" not in meta["headers"]


def test_a_webhook_get_passes_its_query_as_data(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    answer = rest.get(hook(name), params=[("id", "7"), ("tag", "x"), ("tag", "y")])
    assert answer.status_code == 200, answer.text
    line = wait_sink(platform, name, "sink", 1)[0]
    assert line["data"] == {"id": "7", "tag": ["x", "y"]}
    assert line["metadata"]["method"] == "GET"


def test_a_body_that_is_not_a_json_object_arrives_as_base64(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    answer = rest.post(hook(name), content=b"a=1&b=\xff", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    line = wait_sink(platform, name, "sink", 1)[0]
    assert base64.b64decode(line["data"]["raw"]) == b"a=1&b=\xff"


def test_unknown_and_inactive_flows_answer_404_json(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str]) -> None:
    assert_json_error(rest.post("/hooks/no-such-flow", json={}), 404)
    created = rest.post("/v1/flows", headers=auth(integrator["token"]), json={
        "display_name": unique("idle"), "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "webhook"}]}})
    assert created.status_code == 200, created.text
    assert_json_error(rest.post(hook(created.json()["name"]), json={}), 404)


@pytest.mark.parametrize("levels", [25, 3000])
def test_json_nested_too_deep_answers_400_naming_the_body(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str],
        levels: int) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    deep = '{"a":' * (levels - 1) + '{"leaf":1}' + "}" * (levels - 1)
    answer = rest.post(hook(name), content=deep.encode(),
                       headers={"content-type": "application/json"})
    body = assert_json_error(answer, 400)
    assert [v["field"] for d in body["details"] for v in d.get("field_violations", [])] == [
        "body"]


def test_a_body_over_the_limit_answers_413_json(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    assert_json_error(rest.post(hook(name), content=b"x" * (10 * 1024 * 1024 + 1)), 413)


def test_an_idempotent_retry_starts_nothing_new(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    key = {"idempotency-key": uuid.uuid4().hex}
    first = rest.post(hook(name), json={"n": 1}, headers=key)
    again = rest.post(hook(name), json={"n": 1}, headers=key)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json() == again.json()
    # A later request without the key is the barrier: once it arrived, a duplicate would have.
    assert rest.post(hook(name), json={"n": 2}).status_code == 200
    lines = wait_sink(platform, name, "sink", 2)
    time.sleep(0.5)
    assert sorted(line["data"]["n"] for line in sink_lines(platform, name, "sink")) == [1, 2]
    assert len(lines) == 2


# --------------------------------------------------------------------------- bearer

def test_a_bearer_hook_needs_a_token_with_flows_execute_of_the_tenant(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str], admin_token: str) -> None:
    name = hook_flow(rest, integrator["token"], builtins, settings={"require_auth": True})
    assert_json_error(rest.post(hook(name), json={"n": 1}), 401)
    assert_json_error(rest.post(hook(name), json={"n": 1},
                                headers={"authorization": "Bearer forged"}), 401)
    # Another tenant's administrator: the flow is not there for it (as if it did not exist).
    _, _, stranger = create_tenant_with_admin(rest, admin_token)
    foreign = rest.post(hook(name), json={"n": 3}, headers=auth(stranger))
    missing = rest.post("/hooks/0000000000", json={"n": 3}, headers=auth(stranger))
    assert_json_error(foreign, 404)
    assert foreign.json()["code"] == missing.json()["code"]
    accepted = rest.post(hook(name), json={"n": 2}, headers=auth(integrator["token"]))
    assert accepted.status_code == 200, accepted.text
    assert [line["data"] for line in wait_sink(platform, name, "sink", 1)] == [{"n": 2}]


# --------------------------------------------------------------------------- HMAC

def test_hmac_right_is_accepted_wrong_is_403_and_enqueues_nothing(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    secret = hmac_secret(rest, token, PREVIOUS_KEY)
    name = hook_flow(rest, token, builtins, settings={
        "require_auth": True, "hmac_secret": secret, "hmac_header": "x-signature",
        "hmac_algorithm": "sha512", "hmac_encoding": "base64"})
    # Rotate: the new key signs from now on; the previous one stays valid for the grace period.
    rotated = rest.patch(f"/v1/{secret}", headers=auth(token),
                         json={"value": {"key": KEY.decode()}})
    assert rotated.status_code == 200, rotated.text
    body = b'{"n": 1}'
    missing = rest.post(hook(name), content=body)
    wrong = rest.post(hook(name), content=body, headers={
        "x-signature": signatures.sign(b"guessed", body, "sha512", "base64")})
    tampered = rest.post(hook(name), content=b'{"n": 666}', headers={
        "x-signature": signatures.sign(KEY, body, "sha512", "base64")})
    for refused in (missing, wrong, tampered):
        assert_json_error(refused, 403)
    signed = rest.post(hook(name), content=body, headers={
        "x-signature": base64.b64encode(hmac.new(KEY, body, hashlib.sha512).digest()).decode()})
    assert signed.status_code == 200, signed.text
    body2 = b'{"n": 2}'
    previous = rest.post(hook(name), content=body2, headers={
        "x-signature": signatures.sign(PREVIOUS_KEY, body2, "sha512", "base64")})
    assert previous.status_code == 200, previous.text
    wait_sink(platform, name, "sink", 2)
    time.sleep(0.5)
    assert sorted(line["data"]["n"] for line in sink_lines(platform, name, "sink")) == [1, 2]
    # The signature header is a credential: it does not reach the flow.
    assert all("x-signature" not in line["metadata"]["headers"]
               for line in sink_lines(platform, name, "sink"))


def test_standard_webhooks_replay_is_403_and_a_repeated_id_runs_once(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    whsec = b"whsec_" + base64.b64encode(b"standard webhooks key")
    secret = hmac_secret(rest, integrator["token"], whsec)
    name = hook_flow(rest, integrator["token"], builtins, settings={
        "require_auth": True, "hmac_secret": secret,
        "signature_scheme": "SIGNATURE_SCHEME_STANDARD_WEBHOOKS", "timestamp_tolerance": "60s"})

    def send(message_id: str, timestamp: int, body: bytes, key: bytes = whsec) -> httpx.Response:
        return rest.post(hook(name), content=body, headers={
            "content-type": "application/json", "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures.standard_sign(key, message_id, timestamp, body)})

    now = int(time.time())
    body = b'{"n": 1}'
    first = send("msg_1", now, body)
    assert first.status_code == 200, first.text
    # The same delivery again (a sender's retry): the same execution, nothing new.
    again = send("msg_1", now, body)
    assert again.status_code == 200 and again.json() == first.json()
    # A captured request replayed later: its timestamp is out of tolerance.
    assert_json_error(send("msg_2", now - 3600, b'{"n": 2}'), 403)
    assert_json_error(send("msg_3", now, b'{"n": 3}', key=b"whsec_" + base64.b64encode(b"x")),
                      403)
    assert send("msg_4", now, b'{"n": 4}').status_code == 200
    wait_sink(platform, name, "sink", 2)
    time.sleep(0.5)
    assert sorted(line["data"]["n"] for line in sink_lines(platform, name, "sink")) == [1, 4]


# --------------------------------------------------------------------------- SYNC

def test_a_sync_webhook_returns_the_reply_steps_answer(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins, settings={
        "response_mode": "RESPONSE_MODE_SYNC", "sync_timeout": "20s"},
        reply={"status": 201, "headers": {"x-order-state": "accepted"},
               "body": "{'received': order, 'twice': n * 2}"})
    answer = rest.post(hook(name), json={"order": 98765432109876543210, "n": 21})
    assert answer.status_code == 201, answer.text
    assert answer.headers["x-order-state"] == "accepted"
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {"received": 98765432109876543210, "twice": 42}
    # The flow went on after the reply.
    assert wait_sink(platform, name, "sink", 1)[0]["data"]["n"] == 21


def test_a_sync_webhook_without_a_reply_answers_504(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins, settings={
        "response_mode": "RESPONSE_MODE_SYNC", "sync_timeout": "1s"})
    assert_json_error(rest.post(hook(name), json={"n": 1}), 504)


# --------------------------------------------------------------------------- backpressure

class _Holding(http.server.BaseHTTPRequestHandler):
    """Answers every request only once `release` is set: the step using it falls behind."""

    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.release.wait(60)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def holding_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((RECEIVER_HOST, 0), _Holding)
    _Holding.release.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{RECEIVER_HOST}:{server.server_address[1]}/"
    _Holding.release.set()
    server.shutdown()


def test_a_full_first_step_queue_answers_429_with_retry_after(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str], holding_server: str) -> None:
    first = {"id": "call", "component": builtins["http-request"], "function": "request",
             "fields": {"url": holding_server, "timeout": 120},
             "settings": {"concurrency": 1}}
    name = hook_flow(rest, integrator["token"], builtins, first=first,
                     settings={"max_queued_messages": 2})
    statuses = []
    for n in range(40):
        answer = rest.post(hook(name), json={"n": n})
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert_json_error(answer, 429)
            assert int(answer.headers["retry-after"]) >= 1
            break
        assert answer.status_code == 200, answer.text
        time.sleep(0.1)
    assert statuses[-1] == 429, statuses
    # What was accepted is not lost: released, it all reaches the sink.
    _Holding.release.set()
    accepted = statuses.count(200)
    assert len(wait_sink(platform, name, "sink", accepted, timeout=60)) == accepted


def test_webhook_source_is_in_the_executions_view(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    name = hook_flow(rest, integrator["token"], builtins)
    execution = rest.post(hook(name), json={"n": 1}).json()["execution"]
    wait_sink(platform, name, "sink", 1)
    deadline = time.monotonic() + 20
    while True:
        view = rest.get(f"/v1/{execution}", headers=auth(integrator["token"]))
        if view.status_code == 200 and view.json()["state"] == "STATE_SUCCEEDED":
            break
        assert time.monotonic() < deadline, view.text
        time.sleep(0.2)
    assert view.json()["source"] == "webhook"
    assert [step["step_id"] for step in view.json()["steps"]] == ["start", "sink"]

