"""How a worker receives its step's resolved credentials without them touching disk, a log,
its command line or its environment:

- `OIH_WORKER_CREDENTIALS=stdin`: the local driver writes the JSON object to the worker's
  standard input and closes it (a pipe: nothing on disk, nothing in /proc/<pid>/cmdline or
  /proc/<pid>/environ);
- `OIH_WORKER_CREDENTIALS_FILE=<path>`: the kubernetes driver mounts the step's Kubernetes
  Secret as a file (a tmpfs volume), not as an env var of the Deployment;
- neither: the step names no credentials.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

STDIN = "stdin"


class CredentialsError(RuntimeError):
    """The credentials were announced but could not be read (the message never quotes them)."""


def from_env(env: Mapping[str, str] | None = None, stdin: IO[bytes] | None = None
             ) -> dict[str, Any] | None:
    env = os.environ if env is None else env
    if env.get("OIH_WORKER_CREDENTIALS") == STDIN:
        raw = (stdin or sys.stdin.buffer).read()
        source = "standard input"
    elif env.get("OIH_WORKER_CREDENTIALS_FILE"):
        path = env["OIH_WORKER_CREDENTIALS_FILE"]
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as error:
            raise CredentialsError(f"cannot read the credentials file: {error.strerror}") from None
        source = "the credentials file"
    else:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise CredentialsError(f"the credentials on {source} are not JSON") from None
    if not isinstance(value, dict):
        raise CredentialsError(f"the credentials on {source} are not a JSON object")
    return value
