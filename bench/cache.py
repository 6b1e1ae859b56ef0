"""The response cache's cost and gain: one Sluice, measured alternately with requests it does not cache,
requests that miss (looked up, then stored) and requests that hit, in the same run.

    .venv/bin/python bench/cache.py               # ~8 s per measurement, 3 rounds
    .venv/bin/python bench/cache.py --quick       # ~2 s per measurement
    .venv/bin/python bench/cache.py --backend sqlite

Same machinery as ``overhead.py`` (its emulator, its load generator, its CPU accounting): Sluice pinned to
one core, the emulator and the load on the other. The three kinds of request are the same ~1.1 KB chat
body: ``skip`` has ``temperature: 0.2`` (the default mode leaves it alone: the cost of deciding), ``miss``
has ``temperature: 0`` and a different prompt each time (a lookup that finds nothing, then a store),
``hit`` has ``temperature: 0`` and one prompt, stored before the run. Reported: c=1 latency (p50, p99)
and c=64 requests/s with CPU per request, medians of the rounds, and ratios against ``skip``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from overhead import (
    ADMIN_KEY,
    ALIAS,
    CHAT_PATH_SLUICE,
    Load,
    Meter,
    Processes,
    Target,
    aiohttp_load,
    http_request,
    run_async,
    start_emulator,
    start_sluice,
    write_config,
)

KINDS = ("skip", "miss", "hit")
UNIQUE = 200_000  # miss bodies: more than a run sends, so none repeats


def body(temperature: float, n: int) -> bytes:
    prompt = "Summarise the following paragraph in one sentence. " * 14
    return json.dumps(
        {
            "model": ALIAS,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. " * 12},
                {"role": "user", "content": f"{prompt} ({n})"},
            ],
            "temperature": temperature,
        }
    ).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("memory", "sqlite"), default="memory")
    args = parser.parse_args(argv)
    seconds, warmup = (2.0, 0.5) if args.quick else (8.0, 1.0)
    bodies = {"skip": [body(0.2, 0)], "miss": [body(0, n) for n in range(UNIQUE)], "hit": [body(0, -1)]}
    with tempfile.TemporaryDirectory(prefix="sluice-cache-bench-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            emu_port, emu_pid = start_emulator(procs, "emulator", 0)
            config = write_config(work, emu_port)
            config.write_text(config.read_text() + f"cache: {{backend: {args.backend}}}\n")
            port, proc = start_sluice(procs, "sluice", config, work / "data", 1)
            headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
            status, _ = http_request(port, "POST", CHAT_PATH_SLUICE, bodies["hit"][0], headers)
            if status != 200:
                print(f"the warm-up request failed: {status}", file=sys.stderr)
                return 1
            url = f"http://127.0.0.1:{port}{CHAT_PATH_SLUICE}"
            target = Target("sluice", url, ADMIN_KEY, ALIAS)
            pids = {"sluice": proc.pid, "emulator": emu_pid}
            results: dict[tuple[str, int], list[Load]] = {}
            offset = 0
            for r in range(args.rounds):
                for conns in (1, 64):
                    for kind in KINDS:
                        print(f"• c={conns} {kind} (round {r + 1} of {args.rounds}) …", flush=True)
                        meter = Meter(pids)
                        sent = bodies[kind] if kind != "miss" else bodies[kind][offset:]
                        load = run_async(aiohttp_load(target, sent, conns, warmup, seconds, meter))
                        if kind == "miss":
                            offset += load.requests
                        load.usage = meter.usage
                        results.setdefault((kind, conns), []).append(load)
            report(results, args.backend)
        finally:
            procs.stop_all()
    return 0


def report(results: dict[tuple[str, int], list[Load]], backend: str) -> None:
    def med(kind: str, conns: int, what: str) -> float:
        loads = results[(kind, conns)]
        if what == "cpu":
            return statistics.median(
                1e6 * ld.usage.cpu_s.get("sluice", 0.0) / ld.ok if ld.ok else 0.0 for ld in loads
            )
        return statistics.median(float(getattr(ld, what)) for ld in loads)

    base = {w: med("skip", c, w) for c, w in ((1, "p50_us"), (64, "rps"))}
    print(f"\nResponse cache ({backend} backend), medians of {len(results[('skip', 1)])} alternated rounds\n")
    print("| requests | c=1 p50 (µs) | c=1 p99 (µs) | c=64 req/s | CPU per request (µs) | errors |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        errors = sum(ld.errors for c in (1, 64) for ld in results[(kind, c)])
        print(
            f"| {kind} | {med(kind, 1, 'p50_us'):,.0f} ({med(kind, 1, 'p50_us') - base['p50_us']:+,.0f}) "
            f"| {med(kind, 1, 'p99_us'):,.0f} | {med(kind, 64, 'rps'):,.0f} "
            f"({med(kind, 64, 'rps') / base['rps']:.2f}x) | {med(kind, 64, 'cpu'):,.0f} | {errors} |"
        )


if __name__ == "__main__":
    sys.exit(main())
