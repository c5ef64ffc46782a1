"""A worker receives its step's credentials over stdin (local driver) or a mounted file
(kubernetes driver), and hands them to a component apart from its config, only when the
component asks for them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oih_sdk import Message, takes_credentials
from oih_worker import envelope
from oih_worker.credentials import CredentialsError, from_env
from oih_worker.process import StepProcessor
from oih_worker.spec import StepSpec

VALUE = {"api_key": "sk-test-credential-value"}


def test_credentials_come_over_stdin_in_a_real_process() -> None:
    program = ("from oih_worker.credentials import from_env; import json; "
               "print(json.dumps(sorted(from_env())))")
    result = subprocess.run([sys.executable, "-c", program], input=json.dumps(VALUE).encode(),
                            env={**os.environ, "OIH_WORKER_CREDENTIALS": "stdin"},
                            capture_output=True, timeout=60, check=True)
    assert json.loads(result.stdout) == ["api_key"]


def test_credentials_from_a_file_or_none(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(VALUE))
    assert from_env({"OIH_WORKER_CREDENTIALS_FILE": str(path)}) == VALUE
    assert from_env({}) is None


@pytest.mark.parametrize("raw", [b"sk-test-credential-value", b'["sk-test-credential-value"]'])
def test_bad_credentials_fail_without_quoting_them(raw: bytes) -> None:
    with pytest.raises(CredentialsError) as caught:
        from_env({"OIH_WORKER_CREDENTIALS": "stdin"}, io.BytesIO(raw))
    assert "sk-test" not in str(caught.value)
    with pytest.raises(CredentialsError, match="cannot read"):
        from_env({"OIH_WORKER_CREDENTIALS_FILE": "/nonexistent/credentials.json"})


def test_a_component_gets_credentials_apart_from_config_only_when_it_asks() -> None:
    seen: dict[str, Any] = {}

    def with_credentials(message: Message, config: dict[str, Any], snapshot: dict[str, Any],
                         *, credentials: dict[str, Any] | None) -> dict[str, Any]:
        seen["credentials"], seen["config"] = credentials, dict(config)
        return {"ok": True}

    def without(message: Message, config: dict[str, Any],
                snapshot: dict[str, Any]) -> dict[str, Any]:
        seen["plain_config"] = dict(config)
        return {"ok": True}

    assert takes_credentials(with_credentials) and not takes_credentials(without)
    spec = StepSpec("f", "s", "unused", "fn", config={"url": "https://crm.example.com"})
    for fn in (with_credentials, without):
        processor = StepProcessor(spec, fn, credentials=VALUE)
        message = Message(data={"n": 1}, id="m1", flow_id="f", step_id="s", execution_id="e")
        outcome = processor.handle(envelope.encode(message), envelope.properties_of(message))
        assert outcome.outputs and "sk-test" not in repr(outcome)
    assert seen["credentials"] == VALUE
    assert seen["config"] == seen["plain_config"] == {"url": "https://crm.example.com"}
    assert "credentials" not in spec.to_json() and "sk-test" not in spec.to_json()
