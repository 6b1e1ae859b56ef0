"""Sluice against LiteLLM's proxy, side by side in one run: non-stream latency and throughput, CPU per
request, paced streams, time to first byte, peak RSS, cold start and installed size.

    .venv/bin/python bench/vs_litellm.py                  # installs LiteLLM in bench/.litellm-venv once
    .venv/bin/python bench/vs_litellm.py --quick          # ~2 s per measurement
    .venv/bin/python bench/vs_litellm.py --profile        # also py-spy profiles of both (bench/results/)
    .venv/bin/python bench/vs_litellm.py --compare bench/results/litellm-<earlier>.jsonl
    .venv/bin/python bench/vs_litellm.py --smoke --against bare   # seconds, no LiteLLM: the test suite's

Each round starts both proxies afresh (one worker each, pinned to core 1; the one not under load idles),
measures every workload on direct (the emulator), Sluice with a capped virtual key and per-user quotas
(budgets and ledger on), Sluice with a virtual key without limits (ledger on, no budgets) and LiteLLM,
reads each server's peak RSS, and stops them. The emulator and the load generator share core 0.
LiteLLM ``1.103.7`` (``litellm[proxy]``; 1.109.x does not install here) runs as its docs recommend for
production without a database (it cannot start one offline): a master key, ``LITELLM_LOCAL_MODEL_COST_MAP``
so it never fetches prices, ``disable_cooldowns``, ``num_retries: 0``. Medians are reported with the
spread of the rounds, as JSON lines, a Markdown table with ratios and a PNG chart (bench/vs_report.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from overhead import (
    ALIAS,
    BENCH_USERS,
    CAPPED_KEY,
    CHAT_PATH_DIRECT,
    CHAT_PATH_SLUICE,
    EMU_KEY,
    OPEN_KEY,
    PACE_SPEC,
    UPSTREAM_MODEL,
    BenchError,
    Meter,
    Processes,
    Target,
    aiohttp_load,
    chat_bodies,
    chat_body,
    create_key,
    free_port,
    http_request,
    paced_streams,
    peak_rss_mib,
    run_async,
    run_guarded,
    start_bare,
    start_emulator,
    start_sluice,
    stop_children_on_term,
    tail,
    write_config,
)
from vs_report import Facts, Round, report

LITELLM_VERSION = "1.103.7"
VENV = Path(os.environ.get("BENCH_LITELLM_VENV") or Path(__file__).resolve().with_name(".litellm-venv"))
MASTER_KEY = "sk-bench-litellm-master"
SERVER_CORE = 1  # the proxies; the emulator and the load generator run on core 0
LOAD_CORE = 0


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment (installed once)."""
    exe = VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"• installing litellm[proxy]=={LITELLM_VERSION} into {VENV} …", flush=True)
        _venv_install(f"litellm[proxy]=={LITELLM_VERSION}")
    return exe


def ensure_pyspy() -> Path:
    """py-spy (for ``--profile``): on the PATH, or installed once into the benchmark's venv."""
    found = shutil.which("py-spy")
    if found:
        return Path(found)
    exe = VENV / "bin" / "py-spy"
    if not exe.exists():
        print(f"• installing py-spy into {VENV} …", flush=True)
        _venv_install("py-spy")
    return exe


def _venv_install(requirement: str) -> None:
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, requirement], check=True)


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


def litellm_config(
    work: Path, emu_port: int, budget_usd: str | None = None, proxy_budget_usd: str | None = None
) -> Path:
    """LiteLLM's config: the emulator's model under the bench alias. ``budget_usd``: the router's daily
    budget on that deployment (what it enforces without a database); ``proxy_budget_usd``: the proxy-wide
    ``litellm_settings.max_budget`` (which it does not enforce without one)."""
    path = work / "litellm.yaml"
    budget = f"      max_budget: {budget_usd}\n      budget_duration: 1d\n" if budget_usd else ""
    proxy_budget = f", max_budget: {proxy_budget_usd}" if proxy_budget_usd else ""
    path.write_text(
        "model_list:\n"
        f"  - model_name: {ALIAS}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{emu_port}/openai/v1\n"
        f"      api_key: {EMU_KEY}\n"
        f"{budget}"
        f"litellm_settings: {{drop_params: true, num_retries: 0{proxy_budget}}}\n"
        "router_settings: {disable_cooldowns: true}\n"
        f"general_settings: {{master_key: {MASTER_KEY}}}\n"
    )
    return path


def start_litellm(
    procs: Processes, exe: Path, config: Path, port: int, cpu: int | None = SERVER_CORE
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the proxy; returns it and the seconds from spawn to its first successful answer."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    argv = [str(exe), "--config", str(config), "--port", str(port), "--num_workers", "1"]
    t0 = time.monotonic()
    proc, log = procs.start("litellm", argv, cpu, env)
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
    raise BenchError(f"LiteLLM never answered; log:\n{tail(log)}")


@dataclass(slots=True)
class Plan:
    """What one run measures, from the command line."""

    rounds: int
    seconds: float
    warmup: float
    streams: int  # paced streams in flight
    ttfb_n: int  # sequential streams timed to their first byte
    rival: str  # "litellm", or "bare" (the bare proxy: no LiteLLM, for the smoke test)
    out: Path
    profile: bool = False
    compare: Path | None = None


@dataclass(slots=True)
class Servers:
    """The two proxies of one round, with their targets."""

    targets: dict[str, Target]
    pids: dict[str, int]
    procs: list[subprocess.Popen[bytes]]
    facts: dict[str, Facts]


def start_servers(procs: Processes, plan: Plan, work: Path, emu_port: int, r: int) -> Servers:
    """Start Sluice (a fresh data directory) and the rival for round ``r``; time each to its first answer."""
    t0 = time.monotonic()
    config = write_config(work, emu_port)
    port, sluice = start_sluice(procs, f"sluice-{r}", config, work / f"data-{r}", SERVER_CORE)
    sluice_start = time.monotonic() - t0
    capped, _ = create_key(port, CAPPED_KEY)
    open_key, _ = create_key(port, OPEN_KEY)
    url = f"http://127.0.0.1:{port}{CHAT_PATH_SLUICE}"
    targets = {
        "direct": Target("direct", f"http://127.0.0.1:{emu_port}{CHAT_PATH_DIRECT}", EMU_KEY, UPSTREAM_MODEL),
        "sluice": Target("sluice", url, capped, ALIAS),
        "sluice_open": Target("sluice_open", url, open_key, ALIAS, party="sluice"),
    }
    rival_port = free_port()
    if plan.rival == "litellm":
        exe = ensure_litellm()
        rival, rival_start = start_litellm(procs, exe, litellm_config(work, emu_port), rival_port)
        targets["litellm"] = Target(
            "litellm", f"http://127.0.0.1:{rival_port}{CHAT_PATH_SLUICE}", MASTER_KEY, ALIAS
        )
    else:
        t0 = time.monotonic()
        rival_port, rival_pid = start_bare(procs, emu_port, SERVER_CORE)
        rival_start = time.monotonic() - t0
        rival = procs.by_pid(rival_pid)
        targets["bare"] = Target(
            "bare", f"http://127.0.0.1:{rival_port}{CHAT_PATH_SLUICE}", "x", UPSTREAM_MODEL
        )
    facts = {"sluice": Facts(start_s=sluice_start), plan.rival: Facts(start_s=rival_start)}
    pids = {"sluice": sluice.pid, plan.rival: rival.pid}
    return Servers(targets, pids, [sluice, rival], facts)


def restart_sluice(procs: Processes, work: Path, emu_port: int, r: int) -> float:
    """Seconds from spawn to the first answer of a Sluice started again on round ``r``'s data directory
    (its prices already extracted, its database migrated): what a restarted deployment takes."""
    t0 = time.monotonic()
    config = write_config(work, emu_port)
    _, sluice = start_sluice(procs, f"sluice-{r}-again", config, work / f"data-{r}", SERVER_CORE)
    took = time.monotonic() - t0
    procs.stop(sluice)
    return took


def measure_round(plan: Plan, servers: Servers, emu_pid: int, r: int) -> Round:
    """Every workload on every target, once."""
    rnd = Round()
    pids = {**servers.pids, "emulator": emu_pid}
    for conns in (1, 64):
        for name, target in servers.targets.items():
            print(f"• round {r + 1} of {plan.rounds}: c={conns} {name} …", flush=True)
            bodies = chat_bodies(target.model, BENCH_USERS)
            meter = Meter(pids)
            load = run_async(aiohttp_load(target, bodies, conns, plan.warmup, plan.seconds, meter))
            load.usage = meter.usage
            rnd.loads[(name, conns)] = load
    for name, target in servers.targets.items():
        print(
            f"• round {r + 1} of {plan.rounds}: {plan.streams} paced streams and TTFB, {name} …", flush=True
        )
        paced = chat_bodies(target.model, BENCH_USERS, stream=True, directive=PACE_SPEC)
        meter = Meter(pids)
        run = run_async(paced_streams(target, paced, plan.streams, plan.warmup, plan.seconds, meter))
        run.usage = meter.usage
        rnd.streams[name] = run
        rnd.ttfb_us[name] = run_async(first_byte_us(target, plan.ttfb_n))
    for party, pid in servers.pids.items():
        servers.facts[party].rss_mb = peak_rss_mib(pid)
    rnd.facts = servers.facts
    return rnd


def profile(plan: Plan, servers: Servers, stamp: str) -> dict[str, Path]:
    """py-spy on each proxy during an extra c=64 run (not a measured one: sampling slows the target)."""
    spy = ensure_pyspy()
    written: dict[str, Path] = {}
    for party, name in (("sluice", "sluice"), (plan.rival, plan.rival)):
        target = servers.targets[name]
        raw = plan.out / f"profile-{party}-{stamp}.collapsed"
        seconds = max(int(plan.seconds), 3)
        argv = [str(spy), "record", "-p", str(servers.pids[party]), "-d", str(seconds), "-r", "100"]
        argv += ["--gil", "-F", "-f", "raw", "-o", str(raw)]
        print(f"• profiling {party} (py-spy, {seconds} s at c=64) …", flush=True)
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        bodies = chat_bodies(target.model, BENCH_USERS)
        run_async(aiohttp_load(target, bodies, 64, 0.0, seconds + 1.0, Meter({})))
        _, err = sampler.communicate(timeout=60)
        if sampler.returncode != 0 or not raw.exists():
            print(f"  py-spy failed ({sampler.returncode}): {err.decode(errors='replace')[-300:]}")
            continue
        summary = raw.with_name(f"profile-{party}-{stamp}.txt")
        summary.write_text(profile_summary(raw.read_text(), party))
        written[party] = summary
    return written


def profile_summary(collapsed: str, party: str, top: int = 40) -> str:
    """The busiest functions of a py-spy collapsed profile: by own time, and with what they call."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            under[frame] = under.get(frame, 0) + n
    lines = [f"py-spy (--gil, by function) of {party} at c=64: {total} samples", ""]
    for title, table in (("own time", own), ("inclusive time", under)):
        lines.append(f"## {title}")
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        lines += [f"{100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in ranked]
        lines.append("")
    return "\n".join(lines)


async def first_byte_us(target: Target, n: int) -> float:
    """Median time to the first body byte of ``n`` sequential streams (2 ms pacing), after warm-ups."""
    body = chat_body(target.model, stream=True, directive="pace_ms=2 tokens=20")
    seen: list[float] = []
    warm = min(10, n)
    async with aiohttp.ClientSession(headers=target.headers) as session:
        for i in range(n + warm):
            t = time.perf_counter()
            async with session.post(target.url, data=body) as resp:
                await resp.content.readany()
                first = time.perf_counter() - t
                await resp.read()
            if i >= warm and resp.status == 200:
                seen.append(first * 1e6)
    return statistics.median(seen) if seen else 0.0


def parse(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement")
    parser.add_argument(
        "--smoke", action="store_true", help="one tiny round (the test suite's harness check)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", choices=("litellm", "bare"), default="litellm", help="the rival proxy")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the results go")
    parser.add_argument("--stream-concurrency", type=int, default=512, help="paced streams in flight")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles of both proxies, after the rounds"
    )
    parser.add_argument(
        "--compare", type=Path, help="an earlier run's JSON lines: is each ratio within its spread?"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        return Plan(1, 0.3, 0.1, 16, 3, args.against, args.out, compare=args.compare)
    seconds, warmup = (2.0, 0.5) if args.quick else (8.0, 1.0)
    return Plan(
        args.rounds,
        seconds,
        warmup,
        args.stream_concurrency,
        50,
        args.against,
        args.out,
        args.profile,
        args.compare,
    )


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    if plan.rival == "litellm":
        ensure_litellm()
    rounds: list[Round] = []
    profiles: dict[str, Path] = {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    plan.out.mkdir(parents=True, exist_ok=True)
    stop_children_on_term()
    work = Path(tempfile.mkdtemp(prefix="sluice-vs-litellm-"))
    procs = Processes(work)

    def body() -> None:
        emu_port, emu_pid = start_emulator(procs, "emulator", LOAD_CORE)
        for r in range(plan.rounds):
            servers = start_servers(procs, plan, work, emu_port, r)
            rounds.append(measure_round(plan, servers, emu_pid, r))
            if plan.profile and r == plan.rounds - 1:
                profiles.update(profile(plan, servers, stamp))
            for proc in servers.procs:
                procs.stop(proc)
            rounds[-1].facts["sluice"].restart_s = restart_sluice(procs, work, emu_port, r)

    failed = run_guarded(work, False, body, procs.stop_all)
    if failed is not None:
        return failed
    sizes = {"sluice": installed_mib(Path(sys.executable), "sluice")}
    if plan.rival == "litellm":
        sizes["litellm"] = installed_mib(VENV / "bin" / "python", "litellm")
    report(rounds, sizes, plan.rival, LITELLM_VERSION, plan.out, stamp, plan.compare, profiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
