"""A private PostgreSQL cluster that a fault test may crash: `initdb` into a temporary
directory, trust auth on 127.0.0.1 and a free port — never the system server on 5432, which
other work on this machine uses.

PostgreSQL refuses to run as root: when the tests run as root, its programs run as the
`postgres` user (`runuser`), in a directory that user owns."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from tests.gateway.conftest import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    return Path(pg_ctl).parent


class PrivatePostgres:
    """`start()` once (initdb, then the server), `crash()` stops it as a crash does (no
    shutdown checkpoint, clients cut off), `start()` again recovers from the WAL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bin = _bin_dir()
        self.user = "postgres" if os.geteuid() == 0 else ""
        # Not under pytest's tmp directory: its root is private to our user, and the server
        # may run as another.
        self.root = Path(tempfile.mkdtemp(prefix="oih-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=False)
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}\n{tail}")

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8")
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            # Eight services with pools of up to 30 connections each.
            "-c max_connections=400",
            # A crash here is a killed server, not a lost machine: the OS keeps what was
            # written, so fsync only slows the test down.
            "-c fsync=off",
        ])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every server process quits at once, like a crash;
        the next start replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def answers(self) -> bool:
        try:
            psycopg2.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its plain `postgresql://` URL (as deploy manifests write)."""
        connection = psycopg2.connect(self.url("postgres"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
