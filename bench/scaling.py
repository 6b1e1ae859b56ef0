"""Multi-instance scaling: one, two and three Sluice instances on PostgreSQL + Redis, in one run.

    .venv/bin/python bench/scaling.py            # ~8 s per measurement, 3 rounds (~4 minutes)
    .venv/bin/python bench/scaling.py --quick    # ~2 s per measurement
    .venv/bin/python bench/scaling.py --smoke    # the tiniest run (1 round, instances 1 and 2), ~10 s

Starts a throwaway PostgreSQL and Redis, the provider emulator and three ``sluice serve --workers 1``
instances sharing ``server.store: postgres``, ``server.counters: redis`` and one ``SLUICE_SECRET``
(cluster.py's helpers), all started once. It creates the capped key of ``overhead.py --budgets`` ($1,000,000
in total, $1,000/day per end user, never reached); every request names one of 1,000 end users. Then, in
alternated rounds (N=1, 2, 3, N=1, 2, 3, …), it loads the first N instances: c=64 non-stream throughput,
the 64 connections split over the N instances (one aiohttp load each, all in one event loop, req/s their
sum), and c=1 latency through instance 1 against the emulator called directly (once per round). After
the load it checks the key's counter in Redis against its rows in the PostgreSQL ledger.

Nothing is pinned: the instances, the load generator, the emulator, PostgreSQL and Redis all share the
machine's cores, so on a 2-core machine the numbers are indicative, not a measure of how instances scale
on machines of their own. Prints a Markdown table, writes every round and a summary as JSON lines
(``--out``), and exits 0 once it has measured (a report, not a test); 1 only if it could not set itself
up. Method: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from cluster import Run, Side, open_holds, pg_sums, start_postgres, start_redis, start_side, write_config
from overhead import (
    ALIAS,
    BENCH_USERS,
    CHAT_PATH_DIRECT,
    NOISE_PCT,
    UPSTREAM_MODEL,
    BudgetCheck,
    Load,
    Meter,
    Processes,
    Target,
    Usage,
    _table,
    admin_call,
    aiohttp_load,
    chat_bodies,
    check_counters,
    head_label,
    run_async,
    run_guarded,
    start_emulator,
    stop_children_on_term,
    utc_day_start_us,
)

CONNS = 64
NODES = 3
SECRET = "bench-scaling-secret"  # noqa: S105 - the throwaway cluster's shared server secret
SHARED = ", store: postgres, database_url: env:BENCH_PG, counters: redis, redis_url: env:BENCH_REDIS"
RESULTS = Path(__file__).resolve().with_name("results")
LAYOUT = (
    "nothing pinned: the instances, the aiohttp load generator, the emulator, PostgreSQL and Redis share "
    "the same cores; indicative on a 2-core machine"
)


@dataclass(slots=True)
class Settings:
    seconds: float
    warmup: float
    rounds: int
    nodes: int


class SharedMeter(Meter):
    """One measurement window for several loads in one event loop: the first ``start`` opens it, the
    last ``stop`` closes it (the loads' own windows open and close within milliseconds of each other)."""

    def __init__(self, pids: dict[str, int], users: int) -> None:
        super().__init__(pids)
        self._users = users
        self._started = 0
        self._stopped = 0

    def start(self) -> None:
        self._started += 1
        if self._started == 1:
            super().start()

    def stop(self) -> Usage:
        self._stopped += 1
        if self._stopped == self._users:
            return super().stop()
        return self.usage


@dataclass(slots=True)
class Point:
    """One round at N instances: the c=64 loads (one per instance), their window's CPU, and c=1."""

    n: int
    loads: list[Load]
    usage: Usage
    lat: Load
    direct: Load  # this round's c=1 direct, for the added latency

    @property
    def rps(self) -> float:
        return sum(x.rps for x in self.loads)

    @property
    def ok(self) -> int:
        return sum(x.ok for x in self.loads)

    @property
    def errors(self) -> int:
        return sum(x.errors for x in self.loads) + self.lat.errors

    def sluice_cpu_us(self, instances: Sequence[str]) -> float:
        """Sluice CPU per answered request, summed over every instance (idle ones included)."""
        cpu = sum(self.usage.cpu_s.get(p, 0.0) for p in instances)
        return 1e6 * cpu / self.ok if self.ok else math.nan

    @property
    def machine_busy(self) -> float:
        """Mean busy % of all cores in the c=64 window."""
        return statistics.fmean(self.usage.core_busy) if self.usage.core_busy else math.nan

    def row(self, round_: int, instances: Sequence[str]) -> dict[str, Any]:
        """This round's JSON line."""
        return {
            "kind": "round",
            "round": round_,
            "instances": self.n,
            "conns_split": _conns(self.n),
            "rps": self.rps,
            "rps_per_instance": [x.rps for x in self.loads],
            "ok": self.ok,
            "errors": self.errors,
            "c64_p50_us_slowest_instance": max(x.p50_us for x in self.loads),
            "c64_p99_us_slowest_instance": max(x.p99_us for x in self.loads),
            "sluice_cpu_us_per_request": self.sluice_cpu_us(instances),
            "machine_busy_pct": self.machine_busy,
            "core_busy_pct": self.usage.core_busy,
            "cpu_pct_of_one_core": {p: self.usage.pct(p) for p in self.usage.cpu_s},
            "c1_p50_us": self.lat.p50_us,
            "c1_p99_us": self.lat.p99_us,
            "direct_c1_p50_us": self.direct.p50_us,
            "direct_c1_p99_us": self.direct.p99_us,
            "c1_added_p50_us": self.lat.p50_us - self.direct.p50_us,
            "c1_added_p99_us": self.lat.p99_us - self.direct.p99_us,
        }


def _conns(n: int) -> list[int]:
    """CONNS connections split over n instances: 64, 32/32, 22/21/21."""
    return [CONNS // n + (i < CONNS % n) for i in range(n)]


async def _together(
    targets: Sequence[Target], bodies: Sequence[bytes], s: Settings, meter: SharedMeter
) -> list[Load]:
    """One aiohttp load per target, all at once in this event loop, CONNS connections split over them."""
    loads = [
        aiohttp_load(t, bodies, c, s.warmup, s.seconds, meter)
        for t, c in zip(targets, _conns(len(targets)), strict=True)
    ]
    return list(await asyncio.gather(*loads))


def c1(target: Target, bodies: Sequence[bytes], s: Settings, pids: dict[str, int]) -> Load:
    meter = Meter(pids)
    load = run_async(aiohttp_load(target, bodies, 1, s.warmup, s.seconds, meter))
    load.usage = meter.usage
    return load


def measure(side: Side, direct: Target, s: Settings, pids: dict[str, int]) -> dict[int, list[Point]]:
    """Alternated rounds: direct at c=1, then for N = 1 … nodes, c=1 through instance 1 and c=64 over
    the first N instances, with the capped key."""
    capped = [Target(f"sluice-{i}", side.url(i), side.capped, ALIAS) for i in range(len(side.ports))]
    bodies = chat_bodies(ALIAS, BENCH_USERS)
    direct_bodies = chat_bodies(UPSTREAM_MODEL, BENCH_USERS)
    points: dict[int, list[Point]] = {}
    for r in range(1, s.rounds + 1):
        tag = f"round {r} of {s.rounds}"
        print(f"• {tag}: c=1 latency, direct …", flush=True)
        d = c1(direct, direct_bodies, s, pids)
        for n in range(1, s.nodes + 1):
            print(f"• {tag}: c=1 latency through instance 1, {n} loaded …", flush=True)
            lat = c1(capped[0], bodies, s, pids)
            split = "/".join(str(c) for c in _conns(n))
            print(f"• {tag}: c={CONNS} throughput over {n} instance(s) ({split}) …", flush=True)
            meter = SharedMeter(pids, n)
            loads = run_async(_together(capped[:n], bodies, s, meter))
            points.setdefault(n, []).append(Point(n, loads, meter.usage, lat, d))
    return points


def accounting(side: Side, dsn: str, redis_url: str, errors: int, wait_s: float = 5.0) -> BudgetCheck:
    """The capped key's counters (Redis, read through instance 1) against its PostgreSQL ledger rows, once
    every instance has committed its ledger queue; retried until they agree or ``wait_s`` has passed
    (Redis settlements are sent in the background)."""
    deadline = time.monotonic() + wait_s
    while True:
        for port in side.ports:
            admin_call(port, "GET", "/admin/spend")  # commits that instance's ledger queue
        day = utc_day_start_us()
        sums = pg_sums(dsn, side.capped_id, day)
        check = check_counters(side.ports[0], side.capped_id, sums, day, errors)
        check.holds = open_holds(redis_url)
        if (check.matches and not check.holds) or time.monotonic() > deadline:
            return check
        time.sleep(0.25)


def check_line(check: BudgetCheck) -> str:
    ok = check.matches and not check.holds
    return (
        f"accounting (capped key, PostgreSQL ledger against Redis counters): {check.rows:,} ledger rows, "
        f"{check.refused:,} refused or failed; key usd/total spent {check.key_spent:,} n$ against the "
        f"ledger's {check.ledger_nanos:,} n$, reserved {check.key_reserved:,}; {check.user_counters:,} "
        f"user usd/day counters spent {check.users_spent:,} n$ (ledger today {check.ledger_today_nanos:,}), "
        f"reserved {check.users_reserved:,}; {check.holds or 0:,} reservations open in Redis: "
        f"{'OK' if ok else 'MISMATCH'}"
    )


# --- report ----------------------------------------------------------------------------------------


def _med(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def _n(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}"


def summarise(points: dict[int, list[Point]], instances: Sequence[str]) -> dict[int, dict[str, Any]]:
    """Per N: the medians over the rounds, and every round's req/s."""
    out: dict[int, dict[str, Any]] = {}
    for n, runs in points.items():
        out[n] = {
            "rps": _med([p.rps for p in runs]),
            "rps_rounds": [p.rps for p in runs],
            "c1_added_p50_us": _med([p.lat.p50_us - p.direct.p50_us for p in runs]),
            "c1_added_p99_us": _med([p.lat.p99_us - p.direct.p99_us for p in runs]),
            "c1_p50_us": _med([p.lat.p50_us for p in runs]),
            "c1_p99_us": _med([p.lat.p99_us for p in runs]),
            "sluice_cpu_us_per_request": _med([p.sluice_cpu_us(instances) for p in runs]),
            "machine_busy_pct": _med([p.machine_busy for p in runs]),
            "c64_p50_us_slowest_instance": _med([max(x.p50_us for x in p.loads) for p in runs]),
            "c64_p99_us_slowest_instance": _med([max(x.p99_us for x in p.loads) for p in runs]),
            "errors": sum(p.errors for p in runs),
        }
    base = out.get(1, {}).get("rps", math.nan)
    for row in out.values():
        row["x_of_1"] = row["rps"] / base if base else math.nan
    return out


def table_rows(summary: dict[int, dict[str, Any]]) -> list[list[str]]:
    heads = ["instances", f"req/s, c={CONNS}", "x of N=1", "added c=1 p50 (µs)", "added c=1 p99 (µs)"]
    heads += ["Sluice CPU µs/request", "machine CPU busy", f"c={CONNS} p50 / p99 ms (slowest)", "errors"]
    rows = [[*heads, "rounds (req/s)"]]
    for n, x in summary.items():
        ms = f"{x['c64_p50_us_slowest_instance'] / 1000:.1f} / {x['c64_p99_us_slowest_instance'] / 1000:.1f}"
        rows.append(
            [
                f"N={n}",
                _n(x["rps"]),
                "-" if math.isnan(x["x_of_1"]) else f"{x['x_of_1']:.2f}x",
                _n(x["c1_added_p50_us"]),
                _n(x["c1_added_p99_us"]),
                _n(x["sluice_cpu_us_per_request"]),
                f"{x['machine_busy_pct']:.0f} %",
                ms,
                str(x["errors"]),
                " / ".join(_n(v) for v in x["rps_rounds"]),
            ]
        )
    return rows


def cpu_rows(points: dict[int, list[Point]], instances: Sequence[str]) -> list[list[str]]:
    """Where the CPU went in each c=64 window (% of one core)."""
    ncores = max((len(p.usage.core_busy) for runs in points.values() for p in runs), default=0)
    parties = ["load", "emulator", "redis", "postgres", *instances, "other"]
    heads = {"load": "load generator", **{p: f"instance {i + 1}" for i, p in enumerate(instances)}}
    rows = [["window", *(f"cpu{i} busy" for i in range(ncores)), *(heads.get(p, p) for p in parties)]]
    for n, runs in points.items():
        for r, p in enumerate(runs, 1):
            busy = [f"{b:.0f}%" for b in p.usage.core_busy]
            rows.append([f"N={n} round {r}", *busy, *(f"{p.usage.pct(x):.0f}%" for x in parties)])
    return rows


def report(
    points: dict[int, list[Point]],
    instances: Sequence[str],
    check: BudgetCheck | None,
    s: Settings,
    out: Path,
) -> Path:
    """Prints the tables and writes the JSON lines; returns their path."""
    summary = summarise(points, instances)
    directs = [p.direct for p in points.get(1, [])]
    direct = {"c1_p50_us": _med([d.p50_us for d in directs]), "c1_p99_us": _med([d.p99_us for d in directs])}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scaling-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
    with path.open("w") as f:
        for runs in points.values():
            for r, p in enumerate(runs, 1):
                f.write(json.dumps(p.row(r, instances)) + "\n")
        line = {
            "kind": "summary",
            "sluice": head_label(),
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "layout": LAYOUT,
            "settings": asdict(s),
            "direct": direct,
            "instances": {str(n): row for n, row in summary.items()},
            "check": None if check is None else {**asdict(check), "ok": check.matches and not check.holds},
        }
        f.write(json.dumps(line) + "\n")
    print()
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    print(
        f"Sluice on 1 … {s.nodes} instances (PostgreSQL, Redis), {when}, {head_label()}, Python "
        f"{platform.python_version()}, {psutil.cpu_count()} CPUs"
    )
    print(f"{LAYOUT}.")
    print(
        f"capped key ($1,000,000 total, $1,000/day per user), {BENCH_USERS:,} end users; {s.seconds:g} s per "
        f"measurement after {s.warmup:g} s warm-up; medians of {s.rounds} alternated round(s). c=64: the 64 "
        f"connections split over the N instances, req/s summed, p50/p99 of the slowest instance (the "
        f"loads keep no samples to merge). c=1: through instance 1 only, minus direct (emulator: p50 "
        f"{_n(direct['c1_p50_us'])} µs, p99 {_n(direct['c1_p99_us'])} µs). Sluice CPU: all instances' "
        f"CPU in the c=64 window per answered request; machine CPU busy: mean of all cores."
    )
    print()
    print("\n".join(_table(table_rows(summary))))
    if check is not None:
        print(check_line(check))
    print()
    print("CPU during each c=64 window (% of one core; 'other' = busy time of other processes):")
    print("\n".join(_table(cpu_rows(points, instances))))
    noisy = [(n, r, p.usage.pct("other")) for n, ps in points.items() for r, p in enumerate(ps, 1)]
    noisy = [x for x in noisy if x[2] > NOISE_PCT]
    if noisy:
        n, r, worst = max(noisy, key=lambda x: x[2])
        print(
            f"note: other processes were busy during {len(noisy)} window(s) (up to {worst:.0f}% of a core, "
            f"N={n} round {r}); those numbers read low. Rerun on a quiet machine."
        )
    print(f"\nJSON lines: {path}")
    return path


# --- main ------------------------------------------------------------------------------------------


def setup(
    procs: Processes, work: Path, nodes: int, removals: list[Path]
) -> tuple[Side, Target, dict[str, Any]]:
    """PostgreSQL, Redis, the emulator and ``nodes`` instances; returns the instances, the direct target,
    and the state the run needs later (the DSN, the Redis URL, the pids whose CPU is accounted)."""
    print("• PostgreSQL, Redis and the emulator (nothing pinned) …", flush=True)
    dsn, pg_pid, dirs = start_postgres(procs, None)
    removals += dirs
    redis_url, redis_pid = start_redis(procs, None)
    emu_port, emu_pid = start_emulator(procs, "emulator", None)
    run = Run(work, "", 0, 0, None, None)  # start_side only uses its work dir, pids and (no) core
    run.pids.update({"emulator": emu_pid, "redis": redis_pid, "postgres": pg_pid})
    env = {"SLUICE_SECRET": SECRET, "BENCH_PG": dsn, "BENCH_REDIS": redis_url}
    config = write_config(work / "cluster.yaml", emu_port, SHARED)
    side = start_side(procs, run, "sluice", "Sluice (PostgreSQL, Redis)", config, nodes, env)
    direct = Target("direct", f"http://127.0.0.1:{emu_port}{CHAT_PATH_DIRECT}", "x", UPSTREAM_MODEL)
    return side, direct, {"dsn": dsn, "redis": redis_url, "pids": dict(run.pids)}


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement")
    parser.add_argument("--smoke", action="store_true", help="1 round, 0.3 s windows, instances 1 and 2")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (N=1, 2, 3, …)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON lines go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.smoke:
        return args, Settings(0.3, 0.1, 1, 2)
    return args, Settings(2.0 if args.quick else 8.0, 1.0 if args.quick else 2.0, args.rounds, NODES)


def main(argv: Sequence[str] | None = None) -> int:
    args, s = parse(argv)

    stop_children_on_term()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-scaling-"))
    procs = Processes(work)
    removals: list[Path] = []
    done: dict[str, Any] = {}

    def body() -> None:
        side, direct, state = setup(procs, work, s.nodes, removals)
        points = measure(side, direct, s, state["pids"])
        errors = sum(p.errors for runs in points.values() for p in runs)
        done["points"] = points
        done["check"] = accounting(side, state["dsn"], state["redis"], errors, 2.0 if args.smoke else 5.0)

    def cleanup() -> None:
        procs.stop_all()
        for path in removals:
            shutil.rmtree(path, ignore_errors=True)

    failed = run_guarded(work, args.keep, body, cleanup)
    if failed is not None:
        return failed
    report(done["points"], [f"sluice-{i}" for i in range(s.nodes)], done["check"], s, args.out)
    if args.keep:
        print(f"work directory (configs, logs): {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
