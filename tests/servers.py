"""Throwaway PostgreSQL and Redis servers on 127.0.0.1, started from the installed binaries.

Multi-instance tests need shared state that really lives in another process. These helpers start a
private server on a free port, wait until it answers, yield its URL and tear it down. A missing binary
is a failure, not a skip: `./scripts/test` installs both servers.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_USER = "sluice"
PG_DATABASE = "sluice"
STARTUP_TIMEOUT_S = 30.0
# PostgreSQL refuses to run as root; when we are root it runs as the first of these that exists.
UNPRIVILEGED_USERS = ("postgres", "nobody")
INSTALL_HINT = "run ./scripts/test once: it installs PostgreSQL and redis-server with apt-get"


def _free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version_key(bindir: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin, numerically by version."""
    version = bindir.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def postgres_bindir() -> Path:
    """The directory holding initdb and postgres: `pg_config --bindir`, else the newest Debian version."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        # On Debian, pg_config may come from libpq-dev alone; only trust it if initdb is really there.
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    pytest.fail(f"PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}", pytrace=False)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail(f"running as root and none of the users {UNPRIVILEGED_USERS} exists to run PostgreSQL")


def _as_user(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    """``argv`` run as ``user``; setpriv execs in place, so signals reach postgres itself."""
    if user is None:
        return argv
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Poll ``ready`` until it is True; fail with the server log if the process dies or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} did not answer within {STARTUP_TIMEOUT_S}s:\n{log.read_text(errors='replace')}"
            )
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` and reap the process; kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PostgresServer:
    """A private PostgreSQL cluster on a free port with fast, unsafe settings; it can be stopped (or
    killed) and started again on the same data and port.

    The log goes to ``tmp_dir/postgres.log``. When we are root the cluster lives in its own directory
    under the system temp dir, owned by an unprivileged user: pytest's base temp dir is mode 0700 and
    root-owned, so that user could not reach a cluster inside it.
    """

    def __init__(self, tmp_dir: Path, *, survives_kill: bool = False) -> None:
        # synchronous_commit=off may lose the last commits when the server is killed (not the OS: fsync
        # can stay off); a test that kills the server and counts rows needs it on
        self.synchronous_commit = "on" if survives_kill else "off"
        self.bindir = postgres_bindir()
        self.user = _unprivileged_user()
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.log = tmp_dir / "postgres.log"
        self.base = Path(tempfile.mkdtemp(prefix="sluice-pg-")) if self.user else tmp_dir / "postgres"
        self.base.mkdir(exist_ok=True)
        self.data, self.sockets = self.base / "data", self.base / "sockets"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def init(self) -> None:
        """Create the cluster and the database."""
        self.sockets.mkdir()
        if self.user:
            for path in (self.base, self.sockets):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        initdb = [
            str(self.bindir / "initdb"),
            f"--pgdata={self.data}",
            f"--username={PG_USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",  # no fsync: a crash only loses a throwaway cluster
            "--no-instructions",
        ]
        with self.log.open("wb") as out:
            done = subprocess.run(
                _as_user(self.user, initdb), cwd=self.base, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            pytest.fail(f"initdb exited with {done.returncode}:\n{self.log.read_text(errors='replace')}")
        self.start()
        createdb = [
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            PG_USER,
            PG_DATABASE,
        ]
        made = subprocess.run(createdb, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.fail(f"createdb failed: {made.stderr}")

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        postgres = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            f"synchronous_commit={self.synchronous_commit}",
            "-c",
            "full_page_writes=off",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                _as_user(self.user, postgres), cwd=self.base, stdout=out, stderr=subprocess.STDOUT
            )
        isready = [
            str(self.bindir / "pg_isready"),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            PG_USER,
        ]
        # pg_isready exits 0 once connections are accepted; 1 while starting, 2 before it listens.
        proc = self.proc
        _wait_until(lambda: subprocess.run(isready, check=False).returncode == 0, proc, "postgres", self.log)

    def stop(self, sig: signal.Signals = signal.SIGQUIT) -> None:
        """Stop the server (SIGQUIT: immediate; SIGKILL: a crash)."""
        if self.proc is not None:
            _stop(self.proc, sig)
            self.proc = None

    def remove(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(tmp_dir: Path) -> Iterator[str]:
    """A private PostgreSQL (see ``PostgresServer``); yields its DSN."""
    server = PostgresServer(tmp_dir)
    try:
        server.init()
        yield server.dsn
    finally:
        server.remove()


def _redis_answers_ping(port: int) -> bool:
    """True when a Redis server on ``port`` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port with no persistence; it can be stopped and started again
    on the same port (empty, as a restarted Redis that keeps nothing on disk is)."""

    def __init__(self, tmp_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(f"redis-server not found on PATH; {INSTALL_HINT}", pytrace=False)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.dir = tmp_dir
        self.log = tmp_dir / "redis.log"
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        _wait_until(lambda: _redis_answers_ping(self.port), proc, "redis-server", self.log)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server."""
        if self.proc is not None:
            _stop(self.proc, sig)
            self.proc = None


@contextlib.contextmanager
def running_redis(tmp_dir: Path) -> Iterator[str]:
    """A private redis-server (see ``RedisServer``); yields its URL."""
    server = RedisServer(tmp_dir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of one throwaway PostgreSQL for the session (database `sluice`, trust auth)."""
    with running_postgres(tmp_path_factory.mktemp("postgres")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one throwaway Redis for the session (no persistence)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def fresh_database(dsn: str, name: str) -> str:
    """A new, empty database on the server of ``dsn`` (dropped first if it exists); returns its DSN."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def make() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(make())
    return dsn.rsplit("/", 1)[0] + "/" + name
