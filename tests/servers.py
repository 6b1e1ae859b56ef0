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


@contextlib.contextmanager
def running_postgres(tmp_dir: Path) -> Iterator[str]:
    """A private PostgreSQL on a free port with fast, unsafe settings; yields its DSN.

    The log goes to ``tmp_dir/postgres.log``. When we are root the cluster lives in its own directory
    under the system temp dir, owned by an unprivileged user: pytest's base temp dir is mode 0700 and
    root-owned, so that user could not reach a cluster inside it.
    """
    bindir = postgres_bindir()
    user = _unprivileged_user()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_dir / "postgres.log"
    base = Path(tempfile.mkdtemp(prefix="sluice-pg-")) if user else tmp_dir / "postgres"
    base.mkdir(exist_ok=True)
    data, sockets = base / "data", base / "sockets"
    proc: subprocess.Popen[bytes] | None = None
    try:
        sockets.mkdir()
        if user:
            for path in (base, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        initdb = [
            str(bindir / "initdb"),
            f"--pgdata={data}",
            f"--username={PG_USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",  # no fsync: a crash only loses a throwaway cluster
            "--no-instructions",
        ]
        with log.open("wb") as out:
            done = subprocess.run(
                _as_user(user, initdb), cwd=base, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            pytest.fail(f"initdb exited with {done.returncode}:\n{log.read_text(errors='replace')}")
        port = _free_port()
        postgres = [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(_as_user(user, postgres), cwd=base, stdout=out, stderr=subprocess.STDOUT)
        isready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER]
        # pg_isready exits 0 once connections are accepted; 1 while starting, 2 before it listens.
        _wait_until(lambda: subprocess.run(isready, check=False).returncode == 0, proc, "postgres", log)
        createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE]
        made = subprocess.run(createdb, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.fail(f"createdb failed: {made.stderr}")
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"
    finally:
        if proc is not None:
            _stop(proc, signal.SIGQUIT)  # immediate shutdown: nothing here is worth a checkpoint
        shutil.rmtree(base, ignore_errors=True)


def _redis_answers_ping(port: int) -> bool:
    """True when a Redis server on ``port`` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(tmp_dir: Path, port: int | None = None) -> Iterator[str]:
    """A private redis-server (on a free port unless ``port`` is given) with no persistence; yields its
    URL. Giving the port of a server that was stopped brings "the same" Redis back, empty."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server not found on PATH; {INSTALL_HINT}", pytrace=False)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_dir / "redis.log"
    port = port or _free_port()
    argv = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_dir),
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until(lambda: _redis_answers_ping(port), proc, "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc, signal.SIGTERM)


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
