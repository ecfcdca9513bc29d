"""A real PostgreSQL server for the tests: ``initdb`` into a temporary folder as the
unprivileged ``postgres`` user (the server refuses to run as root), ``pg_ctl`` on a free
loopback port, stopped at the end of the session.

Test modules import the fixtures they use::

    from conftest_pg import pg_url, postgres_server  # noqa: F401  (pytest fixtures)

``postgres_server`` is one server per session (shared by the modules that import it);
``pg_url`` is a fresh database on it per test. :class:`PostgresServer` starts more servers
(a test that stops and restarts its own). Tests skip only when the server binaries are absent
(``.ci/run`` installs them with apt-get).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import itertools
from pathlib import Path

import pytest

def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (PATH first, then Debian's versioned folders)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),  # Debian: not on PATH
                      key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, reverse=True)
    for d in versions:
        if (d / name).is_file():
            return str(d / name)
    return None


def missing_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if pg_bin(name) is None:
            return (f"PostgreSQL server binaries are not installed ({name} not found; "
                    "apt-get install postgresql-15, as .ci/run does)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install 'sparsesearch[postgres]')"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throw-away PostgreSQL cluster (trust authentication on 127.0.0.1)."""

    def __init__(self) -> None:
        self.user = "postgres"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sparsesearch-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:  # PostgreSQL refuses to run as root
            try:
                pw = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError("running as root needs the unprivileged 'postgres' user to start "
                                   "PostgreSQL (the postgresql package creates it)") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")
        self.running = False
        self._names = itertools.count()

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}\n{log}")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60",
                  "-o", opts, "start")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            self.running = False

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = self.user if password is None else f"{self.user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"  # as users type it

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg2

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


_shared: dict[str, object] = {}


def _shared_server() -> PostgresServer:
    if "server" not in _shared:
        server = PostgresServer()
        atexit.register(server.destroy)  # also when the session dies before teardown
        server.start()
        _shared["server"] = server
        _shared["users"] = 0
    return _shared["server"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (shared by every module importing this fixture)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = _shared_server()
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[arg-type]
    try:
        yield server
    finally:
        _shared["users"] = int(_shared["users"]) - 1  # type: ignore[arg-type]
        if _shared["users"] == 0:
            server.destroy()
            _shared.clear()


@pytest.fixture
def pg_url(postgres_server):
    """A fresh, empty PostgreSQL database: its SQLAlchemy URL."""
    return postgres_server.create_database()
