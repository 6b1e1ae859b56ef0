"""Sluice against LiteLLM's proxy, side by side in one run (first part of the comparison: non-stream
latency and throughput, CPU per request, peak RSS, cold start, installed size).

    .venv/bin/python bench/vs_litellm.py          # installs LiteLLM in bench/.litellm-venv once
    .venv/bin/python bench/vs_litellm.py --quick  # ~2 s per measurement

Both proxies run one worker pinned to core 1 (one at a time under load; the other idles), the emulator
and the load generator on core 0, against the same emulator model. LiteLLM ``1.103.7`` (``litellm[proxy]``;
1.109.x does not install here), configured as its docs recommend for production without a database (it
cannot start one offline): a master key, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it never fetches prices,
``disable_cooldowns`` so it is not penalised by its own defaults, ``num_retries: 0``. Sluice runs its
defaults (SQLite ledger on, pricing on). Rounds alternate Sluice and LiteLLM; medians are reported with
every round, as JSON lines and a Markdown table with ratios (Sluice ÷ LiteLLM, each ÷ direct).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from overhead import (
    ADMIN_KEY,
    ALIAS,
    CHAT_PATH_DIRECT,
    CHAT_PATH_SLUICE,
    EMU_KEY,
    PACE_SPEC,
    UPSTREAM_MODEL,
    Load,
    Meter,
    Processes,
    Streams,
    Target,
    aiohttp_load,
    chat_body,
    http_request,
    paced_streams,
    peak_rss_mib,
    run_async,
    start_emulator,
    start_sluice,
    write_config,
)

LITELLM_VERSION = "1.103.7"
VENV = Path(os.environ.get("BENCH_LITELLM_VENV") or Path(__file__).resolve().with_name(".litellm-venv"))
MASTER_KEY = "sk-bench-litellm-master"


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment (installed once)."""
    exe = VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"• installing litellm[proxy]=={LITELLM_VERSION} into {VENV} …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return exe


_SIZE = """
import importlib.metadata as md, re, sys
seen, todo, total = set(), [sys.argv[1]], 0
while todo:
    name = re.split(r"[ ;<>=!~\\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    paths = [dist.locate_file(f) for f in dist.files or ()]
    total += sum(p.stat().st_size for p in paths if p.exists())
    extras = {"proxy"} if name == "litellm" else set()
    for req in dist.requires or ():
        marker = req.partition(";")[2]
        if "extra ==" in marker and not any(f'"{e}"' in marker for e in extras):
            continue
        todo.append(req)
print(total)
"""


def installed_mib(python: Path, package: str) -> float:
    """What a package and everything it needs at run time occupy in its environment, in MiB."""
    done = subprocess.run([str(python), "-c", _SIZE, package], capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 2**20


def litellm_config(work: Path, emu_port: int, budget_usd: str | None = None) -> Path:
    """LiteLLM's config: the emulator's model under the bench alias (with ``budget_usd``, the router's
    daily budget on that deployment: what it enforces without a database)."""
    path = work / "litellm.yaml"
    budget = f"      max_budget: {budget_usd}\n      budget_duration: 1d\n" if budget_usd else ""
    path.write_text(
        "model_list:\n"
        f"  - model_name: {ALIAS}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{emu_port}/openai/v1\n"
        f"      api_key: {EMU_KEY}\n"
        f"{budget}"
        "litellm_settings: {drop_params: true, num_retries: 0}\n"
        "router_settings: {disable_cooldowns: true}\n"
        f"general_settings: {{master_key: {MASTER_KEY}}}\n"
    )
    return path


def start_litellm(
    procs: Processes, exe: Path, config: Path, port: int
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the proxy; returns it and the seconds from spawn to its first successful answer."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    argv = [str(exe), "--config", str(config), "--port", str(port), "--num_workers", "1"]
    t0 = time.monotonic()
    proc, log = procs.start("litellm", argv, 1, env)
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
    while time.monotonic() - t0 < 120:
        try:
            status, _ = http_request(port, "POST", CHAT_PATH_SLUICE, chat_body(ALIAS), headers)
        except OSError:
            status = 0
        if status == 200:
            return proc, time.monotonic() - t0
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"LiteLLM never answered; log:\n{log.read_text()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the results go")
    parser.add_argument("--stream-concurrency", type=int, default=512, help="paced streams in flight")
    args = parser.parse_args(argv)
    seconds, warmup = (2.0, 0.5) if args.quick else (8.0, 1.0)
    exe = ensure_litellm()
    body = [chat_body(ALIAS)]
    with tempfile.TemporaryDirectory(prefix="sluice-vs-litellm-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            emu_port, emu_pid = start_emulator(procs, "emulator", 0)
            t0 = time.monotonic()
            sluice_port, sluice = start_sluice(
                procs, "sluice", write_config(work, emu_port), work / "data", 1
            )
            sluice_start = time.monotonic() - t0
            ll_port = int(os.environ.get("BENCH_LITELLM_PORT", "0")) or _free()
            litellm, ll_start = start_litellm(procs, exe, litellm_config(work, emu_port), ll_port)
            targets = {
                "direct": Target(
                    "direct", f"http://127.0.0.1:{emu_port}{CHAT_PATH_DIRECT}", EMU_KEY, UPSTREAM_MODEL
                ),
                "sluice": Target(
                    "sluice", f"http://127.0.0.1:{sluice_port}{CHAT_PATH_SLUICE}", ADMIN_KEY, ALIAS
                ),
                "litellm": Target(
                    "litellm", f"http://127.0.0.1:{ll_port}{CHAT_PATH_SLUICE}", MASTER_KEY, ALIAS
                ),
            }
            pids = {"sluice": sluice.pid, "litellm": litellm.pid, "emulator": emu_pid}
            runs: dict[tuple[str, int], list[Load]] = {}
            streams: dict[str, list[Streams]] = {}
            ttfb: dict[str, list[float]] = {}
            for r in range(args.rounds):
                for conns in (1, 64):
                    for name, target in targets.items():
                        print(f"• c={conns} {name} (round {r + 1} of {args.rounds}) …", flush=True)
                        meter = Meter(pids)
                        load = run_async(aiohttp_load(target, body, conns, warmup, seconds, meter))
                        load.usage = meter.usage
                        runs.setdefault((name, conns), []).append(load)
                for name, target in targets.items():
                    print(f"• paced streams c={args.stream_concurrency} and TTFB, {name} …", flush=True)
                    paced = [chat_body(target.model, stream=True, directive=PACE_SPEC)]
                    meter = Meter(pids)
                    run = run_async(
                        paced_streams(target, paced, args.stream_concurrency, warmup, seconds, meter)
                    )
                    run.usage = meter.usage
                    streams.setdefault(name, []).append(run)
                    ttfb.setdefault(name, []).append(run_async(first_byte_us(target, 50)))
            facts = {
                "sluice": {"rss_mb": peak_rss_mib(sluice.pid), "start_s": sluice_start,
                           "installed_mb": installed_mib(Path(sys.executable), "sluice")},
                "litellm": {"rss_mb": peak_rss_mib(litellm.pid), "start_s": ll_start,
                            "installed_mb": installed_mib(VENV / "bin" / "python", "litellm")},
            }  # fmt: skip
            report(runs, streams, ttfb, facts, args.out)
        finally:
            procs.stop_all()
    return 0


async def first_byte_us(target: Target, n: int) -> float:
    """Median time to the first body byte of ``n`` sequential streams (2 ms pacing), after 10 warm-ups."""
    body = chat_body(target.model, stream=True, directive="pace_ms=2 tokens=20")
    seen: list[float] = []
    async with aiohttp.ClientSession(headers=target.headers) as session:
        for i in range(n + 10):
            t = time.perf_counter()
            async with session.post(target.url, data=body) as resp:
                await resp.content.readany()
                first = time.perf_counter() - t
                await resp.read()
            if i >= 10 and resp.status == 200:
                seen.append(first * 1e6)
    return statistics.median(seen) if seen else 0.0


def _free() -> int:
    from overhead import free_port  # noqa: PLC0415 - one helper, only here

    return free_port()


def _stream_value(run: Streams, party: str, what: str) -> float:
    if what == "per_s":
        return run.per_s
    if what == "bad":  # non-200, a transport error or timeout, or no [DONE]
        return float(run.bad)
    if what == "p99_ms":
        ranked = sorted(run.durations_ms)
        return ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))] if ranked else 0.0
    return 1e6 * run.usage.cpu_s.get(party, 0.0) / run.completed if run.completed else 0.0


def _cpu_us(load: Load, party: str) -> float:
    return 1e6 * load.usage.cpu_s.get(party, 0.0) / load.ok if load.ok else 0.0


def report(
    runs: dict[tuple[str, int], list[Load]],
    streams: dict[str, list[Streams]],
    ttfb: dict[str, list[float]],
    facts: dict[str, dict[str, float]],
    out: Path,
) -> None:
    rows: list[dict[str, object]] = []

    def med(name: str, conns: int, what: str) -> float:
        loads = runs[(name, conns)]
        values = [_cpu_us(ld, name) if what == "cpu_us" else float(getattr(ld, what)) for ld in loads]
        rows.append({"target": name, "conns": conns, "metric": what, "rounds": values})
        return statistics.median(values)

    def smed(name: str, what: str) -> float:
        values = [_stream_value(run, name, what) for run in streams[name]]
        rows.append({"target": name, "conns": "streams", "metric": what, "rounds": values})
        return statistics.median(values)

    table = {
        name: {
            "c1_p50_us": med(name, 1, "p50_us"),
            "c1_p99_us": med(name, 1, "p99_us"),
            "c64_rps": med(name, 64, "rps"),
            "c64_cpu_us": med(name, 64, "cpu_us") if name != "direct" else 0.0,
            "streams_per_s": smed(name, "per_s"),
            "stream_p99_ms": smed(name, "p99_ms"),
            "stream_cpu_us": smed(name, "cpu_us") if name != "direct" else 0.0,
            "ttfb_us": statistics.median(ttfb[name]),
            "bad_streams": smed(name, "bad"),
        }
        for name in ("direct", "sluice", "litellm")
    }
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"litellm-{stamp}.jsonl"
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"summary": table, "facts": facts, "litellm": LITELLM_VERSION}) + "\n")
    d, s, ll = table["direct"], table["sluice"], table["litellm"]
    fs, fl = facts["sluice"], facts["litellm"]
    print(
        f"\nSluice against LiteLLM {LITELLM_VERSION} (medians of {len(runs[('direct', 1)])} rounds; {path})\n"
    )
    print("| measurement | direct | Sluice | LiteLLM | Sluice / LiteLLM |")
    print("|---|---|---|---|---|")
    lines = [
        ("c=1 p50 (µs)", d["c1_p50_us"], s["c1_p50_us"], ll["c1_p50_us"]),
        (
            "c=1 added p50 over direct (µs)",
            None,
            s["c1_p50_us"] - d["c1_p50_us"],
            ll["c1_p50_us"] - d["c1_p50_us"],
        ),
        ("c=1 p99 (µs)", d["c1_p99_us"], s["c1_p99_us"], ll["c1_p99_us"]),
        ("c=64 req/s", d["c64_rps"], s["c64_rps"], ll["c64_rps"]),
        ("CPU per request at c=64 (µs)", None, s["c64_cpu_us"], ll["c64_cpu_us"]),
        ("paced streams/s", d["streams_per_s"], s["streams_per_s"], ll["streams_per_s"]),
        ("stream duration p99 (ms)", d["stream_p99_ms"], s["stream_p99_ms"], ll["stream_p99_ms"]),
        ("CPU per stream (µs)", None, s["stream_cpu_us"], ll["stream_cpu_us"]),
        ("failed streams (a round)", d["bad_streams"], s["bad_streams"], ll["bad_streams"]),
        ("time to first byte, c=1 (µs)", d["ttfb_us"], s["ttfb_us"], ll["ttfb_us"]),
        ("peak RSS (MB)", None, fs["rss_mb"], fl["rss_mb"]),
        ("start to first answer (s)", None, fs["start_s"], fl["start_s"]),
        ("installed size, with what it needs (MB)", None, fs["installed_mb"], fl["installed_mb"]),
    ]
    for label, direct, ours, theirs in lines:
        shown = "-" if direct is None else f"{direct:,.0f}"
        digits = 2 if label.startswith("start") else 0
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        print(f"| {label} | {shown} | {ours:,.{digits}f} | {theirs:,.{digits}f} | {ratio} |")
    chart(table, facts, path.with_suffix(".png"))
    print(f"\nchart: {path.with_suffix('.png')}")


def chart(table: dict[str, dict[str, float]], facts: dict[str, dict[str, float]], path: Path) -> None:
    """Four panels: throughput, added latency, CPU per request and peak memory, Sluice beside LiteLLM."""
    import matplotlib as mpl  # noqa: PLC0415 - only the report needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    direct = table["direct"]["c1_p50_us"]
    panels = [
        ("non-stream req/s, c=64 (higher is better)", [table[n]["c64_rps"] for n in ("sluice", "litellm")]),
        ("added p50 latency, c=1, µs", [table[n]["c1_p50_us"] - direct for n in ("sluice", "litellm")]),
        ("CPU per request, µs", [table[n]["c64_cpu_us"] for n in ("sluice", "litellm")]),
        ("peak RSS, MB", [facts[n]["rss_mb"] for n in ("sluice", "litellm")]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    for ax, (title, values) in zip(axes, panels, strict=True):
        bars = ax.bar(["Sluice", f"LiteLLM {LITELLM_VERSION}"], values, color=["#2da44e", "#8c959f"])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Sluice and LiteLLM, one worker pinned to one core, same emulator, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
