"""A private RabbitMQ node for development, the platform's run command and tests.

Debian's `rabbitmq-server` package starts nothing by itself; this module runs a node from it
with every port, directory and the Erlang cookie (via HOME) inside one data directory, so it
never collides with a system broker or with another private node. Tests use it to stop and
start a broker under a running relay or consumer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
INSTALL_HINT = "install the Debian package rabbitmq-server (apt-get install rabbitmq-server)"

# epmd processes this process started, by pid: whichever PrivateBroker object stops one reaps
# it (a Popen never waited for leaves a zombie and a ResourceWarning).
_EPMD_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The private broker could not be started or stopped."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_answers(url: str, timeout: float = 3.0) -> bool:
    """True when an AMQP broker accepts a connection (and the credentials) at `url`."""
    import pika  # imported here so `broker.py` stays usable for start/stop without pika

    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    try:
        connection = pika.BlockingConnection(params)
    except Exception:  # any failure means "no usable broker here"
        return False
    connection.close()
    return True


class PrivateBroker:
    """A RabbitMQ node whose state lives in `data_dir` (ports are remembered there too).

    `start()` is idempotent, `stop()` stops the node and its own epmd. A new object on the same
    `data_dir` (another process) finds the ports in `broker.json` and can stop a running node.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        management_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        saved = self._load_settings()
        self.port = port or saved.get("port") or free_port()
        self.management_port = management_port or saved.get("management_port") or free_port()
        # The distribution and epmd ports only need to differ from every other node's.
        self.dist_port = saved.get("dist_port") or free_port()
        self.epmd_port = saved.get("epmd_port") or free_port()
        self.nodename = f"oih-{self.port}@localhost"

    # --- public -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/"

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (if it is not running) and wait until it accepts AMQP connections."""
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise BrokerError(f"rabbitmq-server not found in {RABBITMQ_BIN}: {INSTALL_HINT}")
        if self.is_running():
            return
        self._write_files()
        self._start_epmd()
        log.info("starting private RabbitMQ %s on port %d (data %s)", self.nodename, self.port,
                 self.data_dir)
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self._env(), capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"rabbitmq-server failed: {result.stderr or result.stdout}")
        # `await_startup` fails right after a detach; `wait PIDFILE` waits for the pid file and
        # then for the node to finish booting.
        wait = self._ctl("wait", "--timeout", str(int(timeout)), str(self._pid_file),
                         timeout=timeout + 10)
        if wait.returncode != 0:
            raise BrokerError(
                f"private RabbitMQ did not start: {wait.stderr or wait.stdout}; "
                f"see the logs in {self.data_dir / 'log'}"
            )
        deadline = time.monotonic() + timeout
        while not broker_answers(self.url):
            if time.monotonic() > deadline:
                raise BrokerError(f"private RabbitMQ does not answer on {self.url}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node and its epmd (epmd outlives the node otherwise)."""
        if self.is_running():
            log.info("stopping private RabbitMQ %s", self.nodename)
            # `stop PIDFILE` returns once the node's OS process has exited.
            result = self._ctl("stop", str(self._pid_file), timeout=timeout)
            if result.returncode != 0:
                pid = self._read_pid(self._pid_file)
                log.warning("rabbitmqctl stop failed (%s); killing pid %s",
                            result.stderr.strip(), pid)
                if pid:
                    _kill(pid, signal.SIGKILL)
        self._stop_epmd()

    def is_running(self) -> bool:
        pid = self._read_pid(self._pid_file)
        return pid is not None and _alive(pid)

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- files and environment --------------------------------------------------------------

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "rabbitmq.pid"

    @property
    def _epmd_pid_file(self) -> Path:
        return self.data_dir / "epmd.pid"

    def _load_settings(self) -> dict[str, int]:
        try:
            return dict(json.loads((self.data_dir / "broker.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _write_files(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "broker.json").write_text(json.dumps({
            "port": self.port, "management_port": self.management_port,
            "dist_port": self.dist_port, "epmd_port": self.epmd_port,
        }))
        (self.data_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # guest may only log in over loopback, which is all this node listens on.
            "loopback_users.guest = true\n"
        )
        (self.data_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.data_dir / "log").mkdir(exist_ok=True)
        (self.data_dir / "mnesia").mkdir(exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.data_dir / "log"),
            "RABBITMQ_PID_FILE": str(self._pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.data_dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.data_dir / "enabled_plugins"),
            # The Erlang cookie is read from and written to $HOME.
            "HOME": str(self.data_dir),
        })
        return env

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env(), capture_output=True, text=True, timeout=timeout, check=False,
        )

    # --- epmd -------------------------------------------------------------------------------

    def _start_epmd(self) -> None:
        # We start epmd ourselves (not daemonized) so we know its pid and can stop it; the node
        # then finds it already listening on ERL_EPMD_PORT.
        pid = self._read_pid(self._epmd_pid_file)
        if pid and _alive(pid):
            return
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        process = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _EPMD_CHILDREN[process.pid] = process
        self._epmd_pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"epmd did not start on port {self.epmd_port}")

    def _stop_epmd(self) -> None:
        pid = self._read_pid(self._epmd_pid_file)
        if pid:
            _kill(pid, signal.SIGTERM)
            process = _EPMD_CHILDREN.pop(pid, None)
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._epmd_pid_file.unlink(missing_ok=True)

    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def ensure_broker(url: str, data_dir: str | os.PathLike[str]) -> str:
    """Return `url` when a broker answers there, else start a private node and return its URL.

    When `url` points at this machine, the private node listens on the same port so the
    configured URL stays right. The node keeps running; `PrivateBroker(data_dir).stop()` ends it.
    """
    from oih_runtime.bus.topology import redact_url

    if broker_answers(url):
        return url
    parsed = urllib.parse.urlparse(url)
    port = parsed.port if parsed.hostname in ("127.0.0.1", "localhost") else None
    broker = PrivateBroker(data_dir, port=port)
    log.warning("no RabbitMQ answers at %s; starting a private node at %s", redact_url(url),
                redact_url(broker.url))
    broker.start()
    return broker.url

