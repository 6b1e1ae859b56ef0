"""Budgets on three Sluice instances (PostgreSQL ledger and keys, Redis counters) against one instance
(SQLite, memory counters), measured in one run.

    .venv/bin/python bench/cluster.py            # ~8 s per measurement, under 2 minutes in all
    .venv/bin/python bench/cluster.py --quick    # ~2 s per measurement (smoke run)

Starts a throwaway PostgreSQL and Redis from the installed binaries, the provider emulator, three
``sluice serve`` instances sharing them (``store: postgres``, ``counters: redis``, one ``SLUICE_SECRET``)
and one instance on its own (``store: sqlite``, ``counters: memory``), all on free loopback ports. On
each side it creates a key capped at $1,000,000 in total with a $1,000/day quota per end user (never
reached), and a key without limits. Every request names one of 1,000 end users. Measures the c=1
latency added over calling the emulator directly, and non-stream throughput at c=64 (spread over the
three instances, one wrk each), with the capped key and with the key without limits. Then checks each
side's counters against its ledger. Prints the tables and exits 0 once it has measured (a report, not a
test); 1 only if it could not set itself up. Method: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
import redis

from overhead import (
    ALIAS,
    BENCH_USERS,
    CAPPED_KEY,
    CHAT_PATH_DIRECT,
    CHAT_PATH_SLUICE,
    LEDGER_DB,
    LEDGER_SUMS_SQL,
    OPEN_KEY,
    UPSTREAM_MODEL,
    WRK_LUA_MANY,
    BenchError,
    BudgetCheck,
    LedgerSums,
    Load,
    Meter,
    Processes,
    Target,
    Usage,
    admin_call,
    budget_line,
    chat_bodies,
    check_counters,
    create_key,
    free_port,
    http_request,
    probe_chat,
    run_guarded,
    run_wrk,
    sqlite_sums,
    start_emulator,
    start_sluice,
    stop_children_on_term,
    tail,
    utc_day_start_us,
)

CONNS = 64
NODES = 3
SECRET = "bench-cluster-secret"  # noqa: S105 - the throwaway cluster's shared server secret
PG_USER = PG_DB = "sluice"
UNPRIVILEGED = ("postgres", "nobody")  # PostgreSQL refuses to run as root


# --- PostgreSQL and Redis -------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """Where initdb and postgres are: ``pg_config --bindir`` if it has them, else the newest Debian one."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])[
        ::-1
    ]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise BenchError("PostgreSQL server binaries not found (./scripts/test installs them)")


def as_unprivileged(argv: list[str]) -> tuple[list[str], pwd.struct_passwd | None]:
    """``argv`` run as an unprivileged user when we are root (setpriv execs: signals reach the server)."""
    if os.geteuid() != 0:
        return argv, None
    for name in UNPRIVILEGED:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
            return ["setpriv", *ids, *argv], user
    raise BenchError(f"running as root and none of the users {UNPRIVILEGED} exists to run PostgreSQL")


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} did not start; log:\n{tail(log)}")
        time.sleep(0.05)


def start_postgres(procs: Processes, cpu: int | None) -> tuple[str, int, list[Path]]:
    """A throwaway cluster (fsync off) with database ``sluice``; returns (DSN, pid, dirs to remove)."""
    bindir = postgres_bindir()
    base = Path(tempfile.mkdtemp(prefix="sluice-bench-pg-"))  # outside the work dir: the user must reach it
    data, sockets, log = base / "data", base / "sockets", procs.log_dir / "postgres.log"
    sockets.mkdir()
    options = ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"]
    initdb, user = as_unprivileged(
        [str(bindir / "initdb"), f"--pgdata={data}", f"--username={PG_USER}", *options]
    )
    if user is not None:
        for path in (base, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    with log.open("ab") as out:
        done = subprocess.run(initdb, cwd=base, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise BenchError(f"initdb failed; log:\n{tail(log)}")
    port = free_port()
    settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
    argv += [x for s in settings for x in ("-c", s)]
    proc, _ = procs.start("postgres", as_unprivileged(argv)[0], cpu)
    isready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER]
    wait_until(lambda: subprocess.run(isready, check=False).returncode == 0, proc, "postgres", log)
    createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB]
    if subprocess.run(createdb, capture_output=True, check=False).returncode != 0:
        raise BenchError("createdb failed")
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DB}", proc.pid, [base]


def start_redis(procs: Processes, cpu: int | None) -> tuple[str, int]:
    """A throwaway redis-server with no persistence; returns (URL, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found (./scripts/test installs it)")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc, log = procs.start("redis", [*argv, "--dir", str(procs.log_dir)], cpu)

    def pong() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(pong, proc, "redis-server", log)
    return f"redis://127.0.0.1:{port}/0", proc.pid


# --- the two sides ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Side:
    """One deployment under test: its instances, its keys, and its measurements."""

    name: str
    label: str
    ports: list[int]
    pids: list[int]
    capped: str = ""  # the capped key's secret and id
    capped_id: str = ""
    open: str = ""
    lat: Load | None = None
    tput: dict[str, Load] = field(default_factory=dict)  # "capped", "open"
    check: BudgetCheck | None = None

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}{CHAT_PATH_SLUICE}"


def write_config(path: Path, emu_port: int, server: str) -> Path:
    """One provider (the emulator behind the ``openai`` preset, so gpt-4o-mini is priced) and one model."""
    path.write_text(
        f"server: {{log_level: warning{server}}}\n"
        "providers:\n"
        f'  - {{name: emu, preset: openai, base_url: "http://127.0.0.1:{emu_port}/openai/v1", '
        'api_key: "env:EMU_KEY"}\n'
        "models:\n"
        f"  - {{name: {ALIAS}, deployments: [{{provider: emu, model: {UPSTREAM_MODEL}}}]}}\n"
    )
    return path


@dataclass(slots=True)
class Run:
    """The run's settings, the processes whose CPU is accounted, and each measurement window's CPU."""

    work: Path
    wrk: str
    seconds: int
    warmup: int
    load_cpu: int | None
    sluice_cpu: int | None
    pids: dict[str, int] = field(default_factory=dict)  # every process tree whose CPU is accounted
    windows: list[tuple[str, Usage]] = field(default_factory=list)
    direct: Load | None = None

    def body_file(self, name: str, model: str) -> Path:
        path = self.work / f"body-{name}.json"
        if not path.exists():
            path.write_bytes(b"\n".join(chat_bodies(model, BENCH_USERS)))
        return path

    def load(self, what: str, targets: Sequence[Target], conns: int) -> Load:
        """One wrk per target, at once, ``conns`` connections spread over them; warm-up, then measured."""
        lua = self.work / "post-many.lua"
        split = [conns // len(targets) + (i < conns % len(targets)) for i in range(len(targets))]
        files = [self.body_file(t.name, t.model) for t in targets]
        print(f"• {what} …", flush=True)

        def all_at_once(seconds: int) -> list[Load]:
            with ThreadPoolExecutor(len(targets)) as pool:
                runs = [
                    pool.submit(run_wrk, self.wrk, t, f, lua, c, seconds)
                    for t, f, c in zip(targets, files, split, strict=True)
                ]
                return [r.result() for r in runs]

        all_at_once(self.warmup)
        meter = Meter(self.pids)
        meter.start()
        loads = all_at_once(self.seconds)
        usage = meter.stop()
        self.windows.append((what, usage))
        # The percentiles of the slowest instance (wrk reports no histogram to merge).
        return Load(
            ok=sum(x.ok for x in loads),
            errors=sum(x.errors for x in loads),
            seconds=max(x.seconds for x in loads),
            p50_us=max(x.p50_us for x in loads),
            p99_us=max(x.p99_us for x in loads),
            tool="wrk",
            usage=usage,
            requests=sum(x.requests for x in loads),
        )


def start_side(
    procs: Processes, run: Run, name: str, label: str, config: Path, n: int, env: dict[str, str]
) -> Side:
    side = Side(name, label, [], [])
    for i in range(n):
        print(f"• starting {label}, instance {i + 1} of {n} …", flush=True)
        data = run.work / f"{name}-{i}"
        port, proc = start_sluice(procs, f"{name}-{i}", config, data, run.sluice_cpu, extra_env=env)
        side.ports.append(port)
        side.pids.append(proc.pid)
        run.pids[f"{name}-{i}"] = proc.pid
    side.open, _ = create_key(side.ports[0], OPEN_KEY)
    side.capped, side.capped_id = create_key(side.ports[0], CAPPED_KEY)
    # An instance that first loads a key it did not create reloads the key's counters from the ledger,
    # which drops what other instances settled but have not committed yet. Load both keys everywhere
    # (GET /v1/models spends nothing) before the first request, so the check below sees the steady state.
    for port in side.ports:
        for secret in (side.open, side.capped):
            status, _ = http_request(port, "GET", "/v1/models", None, {"Authorization": f"Bearer {secret}"})
            if status != 200:
                raise BenchError(f"{label}: GET /v1/models with a new key answered {status}")
    for i, port in enumerate(side.ports):  # every instance knows the capped key (read from the store)
        probe_chat(f"{label} #{i}", port, CHAT_PATH_SLUICE, side.capped, ALIAS, run.work / f"{name}-{i}.log")
    return side


def pg_sums(dsn: str, key_id: str, day_start_us: int) -> LedgerSums:
    """A key's rows in the PostgreSQL ledger (see ``overhead.LedgerSums``)."""

    async def fetch() -> LedgerSums:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(LEDGER_SUMS_SQL.format(day="$1", key="$2"), day_start_us, key_id)
        finally:
            await conn.close()
        assert row is not None
        rows, not_ok, disconnected, nanos, today = (int(x) for x in row)
        return rows, not_ok, disconnected, nanos, today

    return asyncio.run(fetch())


def open_holds(redis_url: str) -> int:
    """Reservations Redis still holds (settled ones are removed at once)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard("sluice:holds"))
    finally:
        client.close()


def check_side(side: Side, sums: Callable[[str, int], LedgerSums], redis_url: str = "") -> BudgetCheck:
    """After the load: flush every instance's ledger, then the counters (instance 0) against the rows."""
    time.sleep(1.0)  # requests wrk left open finish; Redis settlements are sent in the background
    for port in side.ports:
        admin_call(port, "GET", "/admin/spend")  # flushes that instance's ledger queue
    day = utc_day_start_us()
    errors = sum(x.errors for x in (side.lat, side.tput.get("capped")) if x is not None)
    check = check_counters(side.ports[0], side.capped_id, sums(side.capped_id, day), day, errors)
    if redis_url:
        check.holds = open_holds(redis_url)
    return check


def measure(run: Run, single: Side, cluster: Side, direct: Target) -> None:
    def targets(side: Side, key: str, n: int) -> list[Target]:
        bearer = side.capped if key == "capped" else side.open
        return [Target(f"{side.name}-{i}", side.url(i), bearer, ALIAS) for i in range(n)]

    run.direct = run.load("c=1 latency, direct", [direct], 1)
    single.lat = run.load(f"c=1 latency, {single.label}, capped key", targets(single, "capped", 1), 1)
    what = f"c=1 latency, {cluster.label} (the first), capped key"
    cluster.lat = run.load(what, targets(cluster, "capped", 1), 1)
    for key, which in (("capped", "capped key"), ("open", "key without limits")):
        for side in (single, cluster):
            what = f"c={CONNS} throughput, {side.label}, {which}"
            side.tput[key] = run.load(what, targets(side, key, len(side.ports)), CONNS)


# --- report ----------------------------------------------------------------------------------------


def _n(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"  # noqa: PLR0124 - nan check


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("| " + " | ".join(cells) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def _ms(load: Load) -> str:
    return f"{load.p50_us / 1000:.1f} / {load.p99_us / 1000:.1f}"


def cpu_us(load: Load, parties: Sequence[str]) -> float:
    """CPU µs per answered request of the named process trees together."""
    return 1e6 * sum(load.usage.cpu_s.get(p, 0.0) for p in parties) / load.ok if load.ok else float("nan")


def report(run: Run, single: Side, cluster: Side) -> None:
    d = run.direct
    assert d is not None
    sides = (single, cluster)
    nodes = {s.name: [f"{s.name}-{i}" for i in range(len(s.ports))] for s in sides}
    rows = [["measurement", "direct", single.label, cluster.label, "3 instances ÷ 1"]]

    def row(name: str, values: tuple[float, float], direct: str = "") -> list[str]:
        one, three = values
        ratio = f"{three / one:.2f}x" if one and one == one and three == three else "-"  # noqa: PLR0124
        return [name, direct, _n(one), _n(three), ratio]

    lat = [s.lat for s in sides]
    if all(lat):
        ls = [x for x in lat if x is not None]
        rows += [
            row("c=1 latency p50 (µs)", (ls[0].p50_us, ls[1].p50_us), _n(d.p50_us)),
            row("c=1 latency p99 (µs)", (ls[0].p99_us, ls[1].p99_us), _n(d.p99_us)),
            row("  added p50 over direct (µs)", (ls[0].p50_us - d.p50_us, ls[1].p50_us - d.p50_us)),
            row("  added p99 over direct (µs)", (ls[0].p99_us - d.p99_us, ls[1].p99_us - d.p99_us)),
        ]
    for key, what in (("capped", "capped key, 1,000 users"), ("open", "key without limits")):
        t1, t3 = single.tput.get(key), cluster.tput.get(key)
        if t1 is None or t3 is None:
            continue
        rows += [
            row(f"req/s at c={CONNS}, {what}", (t1.rps, t3.rps)),
            row(
                "  Sluice CPU per request (µs, all instances)",
                (cpu_us(t1, nodes["single"]), cpu_us(t3, nodes["cluster"])),
            ),
            ["  c=64 latency p50 / p99 (ms, slowest instance)", "", *(_ms(t) for t in (t1, t3)), ""],
            ["  errors (non-2xx, socket)", "", str(t1.errors), str(t3.errors), ""],
        ]
    t3 = cluster.tput.get("capped")
    if t3 is not None:
        rows += [
            ["  Redis CPU per request (µs), capped key", "", "", _n(cpu_us(t3, ["redis"])), ""],
            ["  PostgreSQL CPU per request (µs), capped key", "", "", _n(cpu_us(t3, ["postgres"])), ""],
        ]
    costs = []
    for s in sides:
        c, o = s.tput.get("capped"), s.tput.get("open")
        if c and o and o.rps:
            costs.append(f"{s.label}: {100 * (1 - c.rps / o.rps):.1f} %")
    print()
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"Sluice budgets on one and {NODES} instances, {when}, Python {platform.python_version()}")
    layout = (
        f"every Sluice pinned to cpu{run.sluice_cpu}; emulator, PostgreSQL, Redis and wrk to "
        f"cpu{run.load_cpu}"
        if run.sluice_cpu is not None
        else "nothing pinned (fewer than 2 usable cores)"
    )
    print(
        f"{psutil.cpu_count()} CPUs; {layout}; {run.seconds} s per measurement after {run.warmup} s warm-up"
    )
    print()
    print("\n".join(_table(rows)))
    if costs:
        print(f"budgets cost (1 - capped ÷ key without limits, req/s): {'; '.join(costs)}")
    for s in sides:
        if s.check:
            print(f"{s.label}: {budget_line(s.check)}")
    if cluster.check and cluster.check.holds:
        print(
            f"  {cluster.check.holds:,} reservations stayed open in Redis. Likely cause: wrk drops its open "
            "requests when its time is up, and a request whose client leaves while its reservation script "
            "is in flight is cancelled before it learns the reservation's id, so nothing settles it; "
            "the reaper charges it at its worst case once its deadline passes (~17 minutes)."
        )
    print()
    print("CPU during each measurement window (% of one core; 'other' = busy time of other processes):")
    heads = ["measurement", "cpu0 busy", "cpu1 busy", "wrk", "emulator", "redis", "postgres"]
    cpu_rows = [[*heads, "1 instance", f"{NODES} instances", "other"]]
    for what, u in run.windows:
        one = sum(u.pct(p) for p in nodes["single"])
        three = sum(u.pct(p) for p in nodes["cluster"])
        busy = [f"{x:.0f}%" for x in u.core_busy[:2]] + ["-"] * (2 - len(u.core_busy[:2]))
        cells = [f"{u.pct(p):.0f}%" for p in ("load", "emulator", "redis", "postgres")]
        cpu_rows.append([what, *busy, *cells, f"{one:.0f}%", f"{three:.0f}%", f"{u.pct('other'):.0f}%"])
    print("\n".join(_table(cpu_rows)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement (smoke run)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)

    stop_children_on_term()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/cluster.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    load_cpu, sluice_cpu = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # wrk inherits it
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-cluster-"))
    (work / "post-many.lua").write_text(WRK_LUA_MANY)
    run = Run(work, wrk, 2 if args.quick else 8, 1 if args.quick else 2, load_cpu, sluice_cpu)
    procs = Processes(work)
    removals: list[Path] = []
    sides: dict[str, Side] = {}

    def body() -> None:
        print("• PostgreSQL, Redis and the emulator …", flush=True)
        dsn, pg_pid, temporary = start_postgres(procs, load_cpu)
        removals.extend(temporary)
        redis_url, redis_pid = start_redis(procs, load_cpu)
        emu_port, emu_pid = start_emulator(procs, "emulator", load_cpu)
        run.pids.update({"emulator": emu_pid, "redis": redis_pid, "postgres": pg_pid})
        env = {"SLUICE_SECRET": SECRET, "BENCH_PG": dsn, "BENCH_REDIS": redis_url}
        one = write_config(work / "single.yaml", emu_port, "")
        shared = ", store: postgres, database_url: env:BENCH_PG, counters: redis, redis_url: env:BENCH_REDIS"
        three = write_config(work / "cluster.yaml", emu_port, shared)
        single = start_side(procs, run, "single", "1 instance (SQLite, memory)", one, 1, env)
        cluster = start_side(
            procs, run, "cluster", f"{NODES} instances (PostgreSQL, Redis)", three, NODES, env
        )
        direct = Target("direct", f"http://127.0.0.1:{emu_port}{CHAT_PATH_DIRECT}", "x", UPSTREAM_MODEL)
        measure(run, single, cluster, direct)
        single.check = check_side(
            single, lambda key, day: sqlite_sums(work / "single-0" / LEDGER_DB, key, day)
        )
        cluster.check = check_side(cluster, lambda key, day: pg_sums(dsn, key, day), redis_url)
        sides.update(single=single, cluster=cluster)

    def cleanup() -> None:
        procs.stop_all()
        for path in removals:
            shutil.rmtree(path, ignore_errors=True)

    failed = run_guarded(work, args.keep, body, cleanup)
    if failed is not None:
        return failed
    report(run, sides["single"], sides["cluster"])
    if args.keep:
        print(f"\nwork directory (configs, logs): {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
