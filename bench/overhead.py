"""Sluice overhead: the gateway against the provider emulator called directly, measured in one run.

    .venv/bin/python bench/overhead.py            # ~8 s per measurement, about 3 minutes in all
    .venv/bin/python bench/overhead.py --quick    # ~2 s per measurement (smoke run)
    .venv/bin/python bench/overhead.py --baseline-ref 1b24c02   # and against that commit's Sluice
    .venv/bin/python bench/overhead.py --budgets  # a capped key with per-user quotas against no limits
    .venv/bin/python bench/overhead.py --cache    # response-cache hits, misses and uncached requests

Starts its own emulator, a bare proxy (bench/bare_proxy.py: Sluice's stack with no gateway logic) and a
one-worker Sluice on free loopback ports, then measures, direct, through the bare proxy and through
Sluice: latency at concurrency 1, non-stream throughput at concurrency 64, paced streams/s at high
concurrency, peak RSS, and the emulator's own capacity on one core. Prints a table with ratios and
targets, then where the CPU went. After the load, counts Sluice's ledger rows against the requests
the load tools saw answered. With ``--baseline-ref REF``, the Sluice of commit REF (a temporary git
worktree) runs too, pinned beside this one; the two are measured alternately (``--rounds``) and
compared. With ``--budgets``, the same Sluice is measured alternately with a virtual key that has no
limits and with one that has a dollar cap and per-user quotas (every request names one of ``--users``
end users), and afterwards its counters are checked against its ledger. Exits 0 once it has measured,
whatever the numbers (a report, not a test); 1 only if it could not set itself up. Method:
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import psutil

try:
    import uvloop

    LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency of Sluice
    LOOP_FACTORY = None

T = TypeVar("T")

ADMIN_KEY = "bench-admin-key"
EMU_KEY = "bench-emulator-key"
ALIAS = "bench-model"
UPSTREAM_MODEL = "gpt-4o-mini"
PACE_SPEC = "pace_ms=10 tokens=20"
PACE_S = 0.010
PACED_EVENTS = 23  # tokens=20: a role chunk, 20 content chunks, the finish chunk, then [DONE]
IDEAL_STREAM_S = (PACED_EVENTS - 1) * PACE_S  # the first event is not delayed
EMULATOR_TARGET_RPS = 20_000
SLUICE_TARGET_RPS = 5_000
ADDED_P50_TARGET_US = 500
RSS_TARGET_MB = 80
NOISE_PCT = 10.0  # 'other' CPU above this (% of a core) in a window gets a warning
CHAT_PATH_DIRECT = "/openai/v1/chat/completions"
CHAT_PATH_SLUICE = "/v1/chat/completions"
BARE_PROXY = Path(__file__).resolve().with_name("bare_proxy.py")
REPO = Path(__file__).resolve().parent.parent
BASELINE_TARGET_PCT = 10.0  # the ledger and pricing may cost less than this share of the baseline's req/s
BUDGETS_TARGET_PCT = 15.0  # a capped key with user quotas may cost less than this share of an open key's
# --budgets: a cap the run never reaches (a request costs ~$0.00005) and a daily quota per end user
CAPPED_KEY: dict[str, Any] = {
    "name": "bench-capped",
    "limits": {"usd": {"total": "1000000"}},
    "user_limits": {"usd": {"day": "1000"}},
}
OPEN_KEY: dict[str, Any] = {"name": "bench-open"}
BENCH_USERS = 1000
LEDGER_DB = "sluice.db"  # in the data directory (sluice.app.DB_FILE)
LAUNCH = "import sys; from sluice.cli.main import main; sys.argv[0] = 'sluice'; main()"

# wrk script: POST the body file with a bearer key; print one machine-readable line at the end.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d status=%d connect=%d read=%d write=%d timeout=%d"
      .. " p50_us=%d p99_us=%d\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
WRK_LUA = (
    """\
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_BEARER")
"""
    + WRK_DONE
)
# The same with one body per line of the file (each naming another end user), sent in turn. The requests
# are formatted once, in init, so that wrk's per-request cost stays a table lookup.
WRK_LUA_MANY = (
    """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_BEARER")
local requests, n = {}, 0

init = function(args)
  for line in io.lines(os.getenv("BENCH_BODY_FILE")) do
    requests[#requests + 1] = wrk.format(nil, nil, nil, line)
  end
end

request = function()
  n = n + 1
  return requests[n % #requests + 1]
end
"""
    + WRK_DONE
)


class BenchError(Exception):
    """The benchmark could not set itself up (a process did not start or did not answer)."""


def stop_children_on_term() -> None:
    """Turn SIGTERM into SystemExit, so that the benchmark's finally blocks stop its children."""

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def run_guarded(
    work: Path, keep: bool, body: Callable[[], object], cleanup: Callable[[], None] | None = None
) -> int | None:
    """Run a benchmark's setup and load: None once it has measured, 1 (work directory kept, for its
    logs) if it could not set itself up, 130 on Ctrl-C. Whatever happened, ``cleanup`` runs (stop the
    children, remove temporary servers), then the work directory goes unless it is kept."""
    try:
        body()
    except BenchError as err:
        keep = True
        print(f"\nbenchmark setup failed: {err}\nlogs kept in {work}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if cleanup is not None:
            cleanup()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return None


# --- small helpers ------------------------------------------------------------------------------


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh loop (uvloop when available, as Sluice itself uses)."""
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        return runner.run(coro)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def chat_body(model: str, *, stream: bool = False, directive: str = "", user: str | None = None) -> bytes:
    """A ~1.1 KB chat request with a system and a user message (like stack-bench.md's body).

    ``user``: OpenAI's end-user field, which Sluice counts against the key's per-user quota.
    """
    prompt = "Summarise the following paragraph in one sentence. " * 14
    if directive:
        prompt += f" @emulator({directive})"
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 12},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    if user is not None:
        body["user"] = user
    return json.dumps(body).encode()


def chat_bodies(model: str, users: int, *, stream: bool = False, directive: str = "") -> list[bytes]:
    """``chat_body`` once per end user (``bench-user-0`` …), or the one body without a user if 0."""
    if users <= 0:
        return [chat_body(model, stream=stream, directive=directive)]
    return [
        chat_body(model, stream=stream, directive=directive, user=f"bench-user-{i}") for i in range(users)
    ]


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One blocking request (setup probes only)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening; log:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on port {port} after {timeout:.0f} s; log:\n{tail(log)}")


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (uvicorn with one worker serves in the process itself)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def vm_kib(pid: int, name: str) -> int:
    """A ``Vm*`` line of /proc/PID/status, in KiB (0 if unavailable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{name}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) summed over the process tree, in MiB (current RSS if no VmHWM)."""
    total = 0
    for proc in tree(pid):
        kib = vm_kib(proc.pid, "VmHWM")
        if not kib:
            with contextlib.suppress(psutil.Error):
                kib = int(proc.memory_info().rss) // 1024
        total += kib
    return total / 1024


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += float(t.user) + float(t.system)
    return total


# --- CPU accounting -----------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """CPU over one measurement window: busy % per core, and CPU seconds per party.

    ``cpu_s`` has ``load`` (this process, i.e. the aiohttp clients, plus wrk once reaped), one entry
    per named process tree (``emulator``, ``sluice``), and ``other``: busy time of the cores not
    explained by those, i.e. other processes on the machine (noise).
    """

    core_busy: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def pct(self, party: str) -> float:
        """CPU of ``party`` as a percentage of one core."""
        return 100.0 * self.cpu_s.get(party, 0.0) / self.wall_s if self.wall_s > 0 else math.nan


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _core_times(cores: list[Any]) -> tuple[list[float], list[float]]:
    totals = [sum(float(x) for x in c) for c in cores]
    busy = [
        tot - float(c.idle) - float(getattr(c, "iowait", 0.0)) for tot, c in zip(totals, cores, strict=True)
    ]
    return busy, totals


class Meter:
    """Samples per-core CPU and the named process trees' CPU time between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._cores: list[Any] = []
        self._cpu: dict[str, float] = {}
        self._t = 0.0
        self.usage = Usage()

    def _snapshot(self) -> dict[str, float]:
        return {"load": _own_cpu(), **{name: cpu_seconds(pid) for name, pid in self._pids.items()}}

    def start(self) -> None:
        self._cores = list(psutil.cpu_times(percpu=True))
        self._cpu = self._snapshot()
        self._t = time.perf_counter()

    def stop(self) -> Usage:
        wall = time.perf_counter() - self._t
        cpu = self._snapshot()
        (b0, t0), (b1, t1) = _core_times(self._cores), _core_times(list(psutil.cpu_times(percpu=True)))
        busy = [
            100.0 * (x1 - x0) / (y1 - y0) if y1 > y0 else 0.0
            for x0, x1, y0, y1 in zip(b0, b1, t0, t1, strict=False)
        ]
        used = {name: cpu[name] - self._cpu.get(name, 0.0) for name in cpu}
        used["other"] = max(0.0, sum(b1) - sum(b0) - sum(used.values()))
        self.usage = Usage(busy, used, wall)
        return self.usage


# --- processes ----------------------------------------------------------------------------------


class Processes:
    """Every child process, stopped on exit: terminate, then kill after a grace period."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.log_dir / f"{name}.log"
        taskset = shutil.which("taskset")
        if cpu is not None and taskset:
            argv = [taskset, "-c", str(cpu), *argv]  # taskset execs: the pid stays the server's
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._procs.append(proc)
        if cpu is not None and not taskset:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpu})
        return proc, log

    def by_pid(self, pid: int) -> subprocess.Popen[bytes]:
        """The child process with this pid."""
        return next(p for p in self._procs if p.pid == pid)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(proc)


def sluice_cmd() -> list[str]:
    script = Path(sys.executable).parent / "sluice"
    return [str(script)] if script.exists() else [sys.executable, "-c", LAUNCH]


def start_emulator(procs: Processes, name: str, cpu: int | None) -> tuple[int, int]:
    """Start ``sluice emulate`` and check it answers a chat request; returns (port, pid)."""
    body = chat_body(UPSTREAM_MODEL)
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    port = free_port()
    proc, log = procs.start(name, [*sluice_cmd(), "emulate", "--host", "127.0.0.1", "--port", str(port)], cpu)
    wait_port(port, proc, log)
    try:
        status, _ = http_request(port, "POST", CHAT_PATH_DIRECT, body, headers)
    except (OSError, http.client.HTTPException):
        status = 0
    if status == 200:
        return port, proc.pid
    log_tail = tail(procs.log_dir / f"{name}.log")
    raise BenchError(f"the emulator never answered a chat request; log:\n{log_tail}")


def write_config(work: Path, emu_port: int) -> Path:
    """The one config every Sluice in the run serves (HEAD and, with --baseline-ref, the baseline).

    Only settings both versions know: the ledger's settings keep their defaults (SQLite in the data
    directory, 50 ms group commit), and no ``price`` is set. The provider is the ``openai`` preset with
    its ``base_url`` pointed at the emulator, so that gpt-4o-mini is priced from genai-prices' bundled
    data (it has no prices for ``openai_compatible``, which Sluice would refuse as unpriced). Each Sluice
    gets its own ``--data-dir``, so that their databases (and schema versions) never meet.
    """
    config = work / "sluice.yaml"
    config.write_text(
        f"server: {{data_dir: {json.dumps(str(work / 'data'))}, log_level: warning}}\n"
        "providers:\n"
        f'  - {{name: emu, preset: openai, base_url: "http://127.0.0.1:{emu_port}/openai/v1", '
        'api_key: "env:EMU_KEY"}\n'
        "models:\n"
        f"  - {{name: {ALIAS}, deployments: [{{provider: emu, model: {UPSTREAM_MODEL}}}]}}\n"
    )
    return config


def start_sluice(
    procs: Processes,
    name: str,
    config: Path,
    data_dir: Path,
    cpu: int | None,
    src: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start ``sluice serve --workers 1``; returns (port, process) once it answers a chat and a stream.

    ``src``: run the Sluice in that source tree (a baseline worktree's ``src``) with this interpreter,
    instead of the installed one. ``extra_env``: more environment (``SLUICE_SECRET``, database URLs).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k != "PYTHONPATH"}
    env.update({"EMU_KEY": EMU_KEY, "SLUICE_ADMIN_KEY": ADMIN_KEY, **(extra_env or {})})
    cmd = sluice_cmd()
    if src is not None:
        env["PYTHONPATH"] = str(src)
        cmd = [sys.executable, "-m", "sluice.cli"]
        where = subprocess.run(
            [sys.executable, "-c", "import sluice; print(sluice.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout.strip()
        if not Path(where).resolve().is_relative_to(src.resolve()):
            raise BenchError(f"{name}: `import sluice` finds {where or 'nothing'}, not the tree in {src}")
    port = free_port()
    argv = [*cmd, "serve", "--config", str(config), "--port", str(port)]
    argv += ["--data-dir", str(data_dir), "--workers", "1"]
    proc, log = procs.start(name, argv, cpu, env)
    wait_port(port, proc, log)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(port, "GET", "/healthz")[0] == 200:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise BenchError(f"{name} /healthz never answered 200; log:\n{tail(log)}")
        time.sleep(0.1)
    probe_chat(name, port, CHAT_PATH_SLUICE, ADMIN_KEY, ALIAS, log)
    return port, proc


def git(*args: str) -> str:
    """``git -C <repo> ARGS``; its output, or BenchError."""
    exe = shutil.which("git")
    if exe is None:
        raise BenchError("--baseline-ref needs git")
    done = subprocess.run(
        [exe, "--no-optional-locks", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def head_label() -> str:
    """``sluice@<short HEAD>``, with ``+dirty`` when src/ has uncommitted changes (they are what runs)."""
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
        return f"sluice@{git('rev-parse', '--short', 'HEAD')}{'+dirty' if dirty else ''}"
    except (BenchError, OSError, subprocess.SubprocessError):
        return "sluice"


@contextlib.contextmanager
def baseline_worktree(ref: str, work: Path) -> Iterator[tuple[Path, str]]:
    """A detached ``git worktree`` of ``ref`` inside the work directory; removed on exit, also on failure.

    Yields the worktree's path and the commit's short hash.
    """
    try:
        sha = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BenchError as err:
        raise BenchError(f"--baseline-ref {ref}: not a commit in {REPO}") from err
    short = git("rev-parse", "--short", sha)
    path = work / f"baseline-{short}"
    git("worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield path, short
    finally:
        try:
            git("worktree", "remove", "--force", str(path))
        except (BenchError, OSError, subprocess.SubprocessError) as err:
            print(f"warning: could not remove the worktree {path}: {err}", file=sys.stderr)


def start_bare(procs: Processes, emu_port: int, cpu: int | None) -> tuple[int, int]:
    """Start bench/bare_proxy.py in front of the emulator; returns (port, pid) once it relays."""
    port = free_port()
    argv = [sys.executable, str(BARE_PROXY), "--port", str(port)]
    argv += ["--upstream", f"http://127.0.0.1:{emu_port}/openai/v1", "--api-key", EMU_KEY]
    proc, log = procs.start("bare-proxy", argv, cpu)
    wait_port(port, proc, log)
    probe_chat("the bare proxy", port, CHAT_PATH_SLUICE, "x", UPSTREAM_MODEL, log)
    return port, proc.pid


def probe_chat(name: str, port: int, path: str, bearer: str, model: str, log: Path) -> None:
    """One chat request and one short stream through a proxy; BenchError unless both come back whole."""
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    try:
        status, raw = http_request(port, "POST", path, chat_body(model), headers)
        if status != 200:
            raise BenchError(f"{name} answered a chat request with {status}: {raw[:300]!r}\n{tail(log)}")
        stream = chat_body(model, stream=True, directive="tokens=3")
        status, raw = http_request(port, "POST", path, stream, headers)
    except (OSError, http.client.HTTPException) as err:
        raise BenchError(f"{name} did not answer a chat request ({err}); log:\n{tail(log)}") from err
    if status != 200 or not raw.rstrip().endswith(b"data: [DONE]"):
        raise BenchError(f"{name} stream probe failed ({status}): {raw[-300:]!r}\n{tail(log)}")


# --- load generators ----------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """A closed-loop non-stream run (concurrency 1 or more): successes, errors, latency."""

    ok: int
    errors: int
    seconds: float
    p50_us: float
    p99_us: float
    tool: str
    usage: Usage = field(default_factory=Usage)
    requests: int = 0  # answers the target sent in the whole run, warm-up included (2xx or not)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class Streams:
    """A paced-stream run: the streams that completed in the measurement window."""

    completed: int
    seconds: float
    durations_ms: list[float]
    bad: int  # non-200, transport error, or a stream not ending in ``data: [DONE]``
    wrong_events: int  # completed streams whose count of ``data:`` events was not PACED_EVENTS
    usage: Usage = field(default_factory=Usage)
    requests: int = 0  # streams started in the whole run, warm-up included
    events: int = 0  # ``data:`` events that arrived in the window, streams complete or not

    @property
    def per_s(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class Target:
    """One side of a comparison."""

    name: str
    url: str
    bearer: str
    model: str
    extra: dict[str, str] = field(default_factory=dict)
    party: str = ""  # the process tree that serves it, in the CPU accounting (default: ``name``)

    @property
    def server(self) -> str:
        return self.party or self.name

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}", "Content-Type": "application/json", **self.extra}


def run_wrk(wrk: str, target: Target, body_file: Path, lua: Path, conns: int, seconds: int) -> Load:
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_BEARER": target.bearer}
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), target.url]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^BENCH (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    v = {k: int(x) for k, x in (kv.split("=") for kv in match.group(1).split())}
    errors = v["status"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
    return Load(
        ok=v["requests"] - v["status"],
        errors=errors,
        seconds=v["duration_us"] / 1e6,
        p50_us=float(v["p50_us"]),
        p99_us=float(v["p99_us"]),
        tool="wrk",
        requests=v["requests"],
    )


def _session(conns: int, headers: dict[str, str]) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=0, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=60),
        skip_auto_headers=("User-Agent",),
    )


async def _windowed(
    conns: int, warmup: float, seconds: float, one: Callable[[], Awaitable[None]], meter: Meter
) -> tuple[float, float]:
    """Run ``one`` in ``conns`` closed loops; meter [warmup, warmup + seconds] and return that window."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await one()

    workers = [asyncio.create_task(loop()) for _ in range(conns)]
    await asyncio.sleep(warmup)
    meter.start()
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    t1 = time.perf_counter()
    meter.stop()
    stop.set()  # let every loop finish its current request or stream
    _, pending = await asyncio.wait(workers, timeout=30)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return t0, t1


async def aiohttp_load(
    target: Target, bodies: Sequence[bytes], conns: int, warmup: float, seconds: float, meter: Meter
) -> Load:
    """Closed-loop POSTs of ``bodies`` in turn; the fallback when wrk is missing (more client CPU, so
    lower direct numbers)."""
    done: list[tuple[float, float]] = []
    errors = 0
    sent = 0
    async with _session(conns, target.headers) as session:

        async def one() -> None:
            nonlocal errors, sent
            body = bodies[sent % len(bodies)]
            sent += 1
            t = time.perf_counter()
            try:
                async with session.post(target.url, data=body) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
                await asyncio.sleep(0.01)
            end = time.perf_counter()
            if ok:
                done.append((end, end - t))
            else:
                errors += 1

        t0, t1 = await _windowed(conns, warmup, seconds, one, meter)
    window = sorted(1e6 * d for end, d in done if t0 <= end < t1)
    p50, p99 = percentile(window, 50), percentile(window, 99)
    return Load(len(window), errors, t1 - t0, p50, p99, "aiohttp", requests=len(done) + errors)


async def paced_streams(
    target: Target, bodies: Sequence[bytes], conns: int, warmup: float, seconds: float, meter: Meter
) -> Streams:
    """Closed-loop streams of ``bodies`` in turn with aiohttp; each is read to its end and checked for
    ``data: [DONE]``."""
    done: list[tuple[float, float]] = []
    arrived: list[tuple[float, int]] = []  # (when, data: events in the chunk)
    bad = 0
    wrong = 0
    sent = 0
    async with _session(conns, target.headers) as session:

        async def one() -> None:
            nonlocal bad, wrong, sent
            body = bodies[sent % len(bodies)]
            sent += 1
            t = time.perf_counter()
            parts: list[bytes] = []
            tail = b""  # shorter than the marker: a marker split over two chunks is counted once
            try:
                async with session.post(target.url, data=body) as resp:
                    async for chunk in resp.content.iter_any():
                        parts.append(chunk)
                        arrived.append((time.perf_counter(), (tail + chunk).count(b"data: ")))
                        tail = chunk[-5:]
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                bad += 1
                await asyncio.sleep(0.01)
                return
            end = time.perf_counter()
            data = b"".join(parts)
            if status != 200 or not data.rstrip().endswith(b"data: [DONE]"):
                bad += 1
                return
            if data.count(b"data: ") != PACED_EVENTS:
                wrong += 1
            done.append((end, end - t))

        t0, t1 = await _windowed(conns, warmup, seconds, one, meter)
    window = sorted(1000 * d for end, d in done if t0 <= end < t1)
    events = sum(n for when, n in arrived if t0 <= when < t1)
    return Streams(len(window), t1 - t0, window, bad, wrong, requests=len(done) + bad, events=events)


# --- the run ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Settings:
    seconds: int
    warmup: int
    stream_conns: int
    conns: int = 64
    rounds: int = 1  # measurements of each Sluice, alternated (HEAD, baseline, HEAD, baseline, …)
    users: int = 0  # end users the requests name in turn (0: no `user` field)


@dataclass(slots=True)
class LedgerCheck:
    """Rows in HEAD's ledger after the run against the requests the load tools saw answered."""

    rows: int
    ok_rows: int
    priced_rows: int
    answered: int  # requests the load tools counted (wrk's totals, the stream client's, the probes)
    in_flight: int  # at most this many more may have reached Sluice uncounted (open when a wrk run ended)

    @property
    def matches(self) -> bool:
        return self.answered <= self.rows <= self.answered + self.in_flight


@dataclass(slots=True)
class BudgetCheck:
    """With --budgets: the capped key's counters after the run against its rows in the ledger."""

    rows: int  # the capped key's ledger rows
    not_ok: int  # of those, rows neither ``ok`` nor ``disconnected`` (wrk leaves requests open): refused
    disconnected: int
    ledger_nanos: int  # their cost
    ledger_today_nanos: int  # the cost of those dated today (UTC) that name a user: the daily counters
    key_spent: int  # the key's usd/total counter
    key_reserved: int
    user_counters: int  # usd/day counters of the key's end users
    users_spent: int
    users_reserved: int
    load_errors: int  # non-2xx answers and socket errors the load tools saw with the capped key
    holds: int | None = None  # Redis: reservations still open (``sluice:holds``)

    @property
    def refused(self) -> int:
        return self.not_ok + self.load_errors

    @property
    def matches(self) -> bool:
        return (
            self.refused == 0
            and self.key_reserved == 0
            and self.users_reserved == 0
            and self.key_spent == self.ledger_nanos
            and self.users_spent == self.ledger_today_nanos
        )


@dataclass(slots=True)
class Results:
    emu_capacity: Load | None = None
    lat: dict[str, Load] = field(default_factory=dict)  # per Sluice: the median over its rounds
    tput: dict[str, Load] = field(default_factory=dict)
    streams: dict[str, Streams] = field(default_factory=dict)
    lat_rounds: dict[str, list[Load]] = field(default_factory=dict)  # per Sluice: each round
    tput_rounds: dict[str, list[Load]] = field(default_factory=dict)
    stream_rounds: dict[str, list[Streams]] = field(default_factory=dict)
    rss_idle_mib: dict[str, float] = field(default_factory=dict)  # "bare", "sluice", "ref"
    rss_peak_mib: dict[str, float] = field(default_factory=dict)
    ledger: LedgerCheck | None = None
    budgets: BudgetCheck | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Bench:
    settings: Settings
    work: Path
    wrk: str | None
    pinned: bool
    load_cpu: int | None
    sluice_cpu: int | None
    baseline_ref: str | None = None
    budgets: bool = False  # --budgets: the capped key ("budgets") against a key without limits
    labels: dict[str, str] = field(default_factory=lambda: {"sluice": "sluice", "ref": "baseline"})
    parties: dict[str, str] = field(default_factory=dict)  # target → the process tree serving it
    answered: dict[str, int] = field(default_factory=dict)  # per target: requests answered, warm-ups too
    in_flight: dict[str, int] = field(default_factory=dict)  # per target: requests a wrk run left open

    @property
    def other(self) -> str:
        """The target compared with HEAD's ``sluice``: the baseline's, or the capped key's."""
        return "budgets" if self.budgets else "ref"

    def party(self, target: str) -> str:
        """The process tree whose CPU a target's requests cost."""
        return self.parties.get(target, target)

    def _count(self, target: str, requests: int, left_open: int) -> None:
        self.answered[target] = self.answered.get(target, 0) + requests
        self.in_flight[target] = self.in_flight.get(target, 0) + left_open

    def load(self, target: Target, bodies: Sequence[bytes], conns: int, pids: dict[str, int]) -> Load:
        """A warmed-up closed-loop non-stream run of ``bodies`` in turn: wrk when installed, else aiohttp."""
        s = self.settings
        meter = Meter(pids)
        if self.wrk:
            body_file = self.work / f"body-{target.name}.json"
            body_file.write_bytes(b"\n".join(bodies))  # JSON bodies hold no raw line break
            lua = self.work / ("post.lua" if len(bodies) == 1 else "post-many.lua")
            warm = run_wrk(self.wrk, target, body_file, lua, conns, s.warmup)
            meter.start()
            result = run_wrk(self.wrk, target, body_file, lua, conns, s.seconds)
            meter.stop()
            # wrk counts the answers it read; up to `conns` requests are still open when it stops
            self._count(target.name, warm.requests + result.requests, 2 * conns)
        else:
            result = run_async(aiohttp_load(target, bodies, conns, s.warmup, s.seconds, meter))
            self._count(target.name, result.requests, 0)  # every loop finishes its request
        result.usage = meter.usage
        return result

    def streams(self, target: Target, bodies: Sequence[bytes], pids: dict[str, int]) -> Streams:
        s = self.settings
        meter = Meter(pids)
        result = run_async(paced_streams(target, bodies, s.stream_conns, s.warmup, s.seconds, meter))
        result.usage = meter.usage
        self._count(target.name, result.requests, 0)
        return result


def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def _cpu_per_unit(usage: Usage, party: str, count: int) -> float:
    """CPU seconds of ``party`` per completed request or stream (nan when none completed)."""
    return usage.cpu_s.get(party, 0.0) / count if count else math.nan


def median_load(loads: list[Load], party: str) -> Load:
    """One Load standing for several rounds: median req/s, percentiles and CPU per request."""
    if len(loads) == 1:
        return loads[0]
    seconds = _median([x.seconds for x in loads])
    ok = round(_median([x.rps for x in loads]) * seconds)
    cpu = _median([_cpu_per_unit(x.usage, party, x.ok) for x in loads])
    usage = Usage([], {party: cpu * ok if not math.isnan(cpu) else 0.0}, seconds)
    p50, p99 = _median([x.p50_us for x in loads]), _median([x.p99_us for x in loads])
    errors, requests = sum(x.errors for x in loads), sum(x.requests for x in loads)
    return Load(ok, errors, seconds, p50, p99, loads[0].tool, usage, requests)


def median_streams(runs: list[Streams], party: str) -> Streams:
    """One Streams standing for several rounds: median streams/s and CPU per stream, pooled durations."""
    if len(runs) == 1:
        return runs[0]
    seconds = _median([x.seconds for x in runs])
    completed = round(_median([x.per_s for x in runs]) * seconds)
    cpu = _median([_cpu_per_unit(x.usage, party, x.completed) for x in runs])
    usage = Usage([], {party: cpu * completed if not math.isnan(cpu) else 0.0}, seconds)
    durations = sorted(d for x in runs for d in x.durations_ms)
    bad, wrong = sum(x.bad for x in runs), sum(x.wrong_events for x in runs)
    return Streams(completed, seconds, durations, bad, wrong, usage, sum(x.requests for x in runs))


def count_ledger(db: Path) -> tuple[int, int, int] | None:
    """Rows in the ledger, those settled ``ok``, and those with a cost; None if there is no ledger."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            rows, ok, priced = con.execute(
                "SELECT count(*), coalesce(sum(status = 'ok'), 0), coalesce(sum(cost_nanos > 0), 0)"
                " FROM ledger"
            ).fetchone()
    except sqlite3.Error:
        return None
    return int(rows), int(ok), int(priced)


def admin_call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One admin API request with the admin key; (status, decoded JSON or None)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    try:
        status, raw = http_request(port, method, path, data, headers)
    except (OSError, http.client.HTTPException) as err:
        raise BenchError(f"{method} {path} failed: {err}") from err
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def create_key(port: int, settings: dict[str, Any]) -> tuple[str, str]:
    """A new virtual key through ``POST /admin/keys``; returns (secret, id)."""
    status, data = admin_call(port, "POST", "/admin/keys", settings)
    if status != 201 or not isinstance(data, dict):
        raise BenchError(f"POST /admin/keys answered {status}: {str(data)[:300]}")
    return str(data["key"]), str(data["id"])


def key_counters(port: int, prefix: str) -> list[dict[str, Any]]:
    """``GET /admin/limits?scope=PREFIX``: the counters of the scopes starting with PREFIX."""
    status, data = admin_call(port, "GET", f"/admin/limits?scope={prefix}")
    if status != 200 or not isinstance(data, dict):
        raise BenchError(f"GET /admin/limits answered {status}: {str(data)[:300]}")
    return list(data["data"])


LedgerSums = tuple[int, int, int, int, int]  # rows, refused or failed, disconnected, n$, n$ dated today
# One key's rows in the ledger, the same SQL on SQLite and PostgreSQL (parameters: day start µs, key id).
LEDGER_SUMS_SQL = (
    "SELECT count(*), coalesce(sum(CASE WHEN status NOT IN ('ok', 'disconnected') THEN 1 ELSE 0 END), 0),"
    " coalesce(sum(CASE WHEN status = 'disconnected' THEN 1 ELSE 0 END), 0), coalesce(sum(cost_nanos), 0),"
    " coalesce(sum(CASE WHEN ts_us >= {day} AND user_id IS NOT NULL THEN cost_nanos ELSE 0 END), 0)"
    " FROM ledger WHERE key_id = {key}"
)


def utc_day_start_us() -> int:
    """The start of this UTC day, in unix µs: the window the users' daily counters are in now."""
    return (int(time.time()) // 86_400) * 86_400 * 1_000_000


def sqlite_sums(db: Path, key_id: str, day_start_us: int) -> LedgerSums:
    """A key's rows in a SQLite ledger (see ``LedgerSums``)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        row = con.execute(LEDGER_SUMS_SQL.format(day="?", key="?"), (day_start_us, key_id)).fetchone()
    rows, not_ok, disconnected, nanos, today = (int(x) for x in row)
    return rows, not_ok, disconnected, nanos, today


def check_counters(
    port: int, key_id: str, sums: LedgerSums, day_start_us: int, load_errors: int
) -> BudgetCheck:
    """The capped key's counters (read from the Sluice on ``port``) against its ledger sums."""
    key = [c for c in key_counters(port, f"key:{key_id}") if c["metric"] == "usd" and c["window"] == "all"]
    day = time.strftime("d%Y-%m-%d", time.gmtime(day_start_us // 1_000_000))
    users = [c for c in key_counters(port, f"user:{key_id}:") if c["metric"] == "usd" and c["window"] == day]
    rows, not_ok, disconnected, nanos, today = sums
    return BudgetCheck(
        rows=rows,
        not_ok=not_ok,
        disconnected=disconnected,
        ledger_nanos=nanos,
        ledger_today_nanos=today,
        key_spent=sum(int(c["spent"]) for c in key),
        key_reserved=sum(int(c["reserved"]) for c in key),
        user_counters=len(users),
        users_spent=sum(int(c["spent"]) for c in users),
        users_reserved=sum(int(c["reserved"]) for c in users),
        load_errors=load_errors,
    )


def check_budgets(port: int, key_id: str, db: Path, load_errors: int) -> BudgetCheck:
    """The capped key's counters against its rows in the SQLite ledger, read while Sluice runs."""
    time.sleep(0.5)  # let the requests a wrk run left open finish
    admin_call(port, "GET", "/admin/spend")  # flushes the ledger's queue
    day_start_us = utc_day_start_us()
    return check_counters(port, key_id, sqlite_sums(db, key_id, day_start_us), day_start_us, load_errors)


def run(b: Bench, res: Results) -> None:
    s = b.settings
    with contextlib.ExitStack() as stack:
        # Entered first, left last: the worktree is removed after every process using it has stopped.
        baseline_src: Path | None = None
        if b.baseline_ref:
            print(f"• git worktree of {b.baseline_ref} …", flush=True)
            tree_dir, short = stack.enter_context(baseline_worktree(b.baseline_ref, b.work))
            baseline_src = tree_dir / "src"
            b.labels["ref"] = f"sluice@{short}"
        procs = Processes(b.work)
        stack.callback(procs.stop_all)

        print("• emulator capacity (alone on one core) …", flush=True)
        cap_port, cap_pid = start_emulator(procs, "emulator-capacity", b.sluice_cpu)
        cap = Target("capacity", f"http://127.0.0.1:{cap_port}{CHAT_PATH_DIRECT}", "x", UPSTREAM_MODEL)
        res.emu_capacity = b.load(cap, [chat_body(cap.model)], s.conns, {"emulator": cap_pid})
        procs.stop_all()

        emu_port, emu_pid = start_emulator(procs, "emulator", b.load_cpu)
        config = write_config(b.work, emu_port)
        # Every proxy shares the proxy core; those not being measured sit idle (see the CPU table).
        bare_port, bare_pid = start_bare(procs, emu_port, b.sluice_cpu)
        sluice_port, sluice_proc = start_sluice(procs, "sluice", config, b.work / "data", b.sluice_cpu)
        b._count("sluice", 2, 0)  # the probe chat and stream
        proxies = {"bare": bare_pid, "sluice": sluice_proc.pid}
        head_url = f"http://127.0.0.1:{sluice_port}{CHAT_PATH_SLUICE}"
        sluices = [Target("sluice", head_url, ADMIN_KEY, ALIAS)]
        capped_id = ""
        if b.budgets:
            # Two virtual keys on the same Sluice: both authenticate the same way; only one has limits.
            print("• creating a key without limits and a capped key with user quotas …", flush=True)
            open_key, _ = create_key(sluice_port, OPEN_KEY)
            capped_key, capped_id = create_key(sluice_port, CAPPED_KEY)
            log = b.work / "sluice.log"
            probe_chat("sluice with the capped key", sluice_port, CHAT_PATH_SLUICE, capped_key, ALIAS, log)
            b._count("budgets", 2, 0)
            sluices = [
                Target("sluice", head_url, open_key, ALIAS),
                Target("budgets", head_url, capped_key, ALIAS, party="sluice"),
            ]
        b.parties = {t.name: t.server for t in sluices}
        if baseline_src is not None:
            print(f"• starting {b.labels['ref']} from the worktree …", flush=True)
            data = b.work / "data-baseline"
            ref_port, ref_proc = start_sluice(procs, "ref", config, data, b.sluice_cpu, baseline_src)
            proxies["ref"] = ref_proc.pid
            sluices.append(Target("ref", f"http://127.0.0.1:{ref_port}{CHAT_PATH_SLUICE}", ADMIN_KEY, ALIAS))
        res.rss_idle_mib = {name: peak_rss_mib(pid) for name, pid in proxies.items()}
        pids = {"emulator": emu_pid, **proxies}
        direct = Target("direct", f"http://127.0.0.1:{emu_port}{CHAT_PATH_DIRECT}", "x", UPSTREAM_MODEL)
        bare = Target("bare", f"http://127.0.0.1:{bare_port}{CHAT_PATH_SLUICE}", "x", UPSTREAM_MODEL)
        # The pacing reaches the emulator as a header when direct, as a directive inside the message
        # (which travels through any proxy untouched) otherwise.
        paced_direct = Target(direct.name, direct.url, "x", UPSTREAM_MODEL, {"x-emulator-fault": PACE_SPEC})
        label = {"direct": "direct", "bare": "bare proxy", **b.labels}

        def lat(t: Target, suffix: str = "") -> Load:
            print(f"• c=1 latency, {label[t.name]}{suffix} …", flush=True)
            return b.load(t, chat_bodies(t.model, s.users), 1, pids)

        def tput(t: Target, suffix: str = "") -> Load:
            print(f"• c={s.conns} non-stream throughput, {label[t.name]}{suffix} …", flush=True)
            return b.load(t, chat_bodies(t.model, s.users), s.conns, pids)

        def streams(t: Target, suffix: str = "") -> Streams:
            print(f"• c={s.stream_conns} paced streams, {label[t.name]}{suffix} …", flush=True)
            if t.name == "direct":
                return b.streams(paced_direct, chat_bodies(t.model, s.users, stream=True), pids)
            return b.streams(t, chat_bodies(t.model, s.users, stream=True, directive=PACE_SPEC), pids)

        def alternated(measure: Callable[[Target, str], T]) -> dict[str, list[T]]:
            """Each Sluice ``s.rounds`` times, alternating, so that a noisy spell of the VM hits both."""
            runs: dict[str, list[T]] = {}
            for i in range(s.rounds):
                for t in sluices:
                    suffix = f" (round {i + 1} of {s.rounds})" if s.rounds > 1 else ""
                    runs.setdefault(t.name, []).append(measure(t, suffix))
            return runs

        res.lat.update({t.name: lat(t) for t in (direct, bare)})
        res.lat_rounds = alternated(lat)
        res.lat.update({name: median_load(runs, b.party(name)) for name, runs in res.lat_rounds.items()})
        res.tput.update({t.name: tput(t) for t in (direct, bare)})
        res.tput_rounds = alternated(tput)
        res.tput.update({name: median_load(runs, b.party(name)) for name, runs in res.tput_rounds.items()})
        res.streams.update({t.name: streams(t) for t in (direct, bare)})
        res.stream_rounds = alternated(streams)
        res.streams.update(
            {name: median_streams(runs, b.party(name)) for name, runs in res.stream_rounds.items()}
        )
        res.rss_peak_mib = {name: peak_rss_mib(pid) for name, pid in proxies.items()}
        if capped_id:
            errors = sum(x.errors for x in (*res.lat_rounds["budgets"], *res.tput_rounds["budgets"]))
            errors += sum(x.bad for x in res.stream_rounds["budgets"])
            res.budgets = check_budgets(sluice_port, capped_id, b.work / "data" / LEDGER_DB, errors)

        # Stop HEAD gracefully (its ledger commits what is queued), then count what it wrote.
        procs.stop(sluice_proc)
        counted = count_ledger(b.work / "data" / LEDGER_DB)
        if counted is None:
            res.notes.append(f"no ledger found in {b.work / 'data' / LEDGER_DB}")
        else:
            served = [name for name, party in b.parties.items() if party == "sluice"]
            answered = sum(b.answered.get(name, 0) for name in served)
            open_ = sum(b.in_flight.get(name, 0) for name in served)
            res.ledger = LedgerCheck(*counted, answered=answered, in_flight=open_)


# --- report -------------------------------------------------------------------------------------


def _n(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a and not math.isnan(a) and not math.isnan(b) else "-"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _table(rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """A Markdown table; the columns in ``left`` are left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def _cpu_per(usage: Usage, party: str, count: int) -> str:
    """CPU microseconds of ``party`` per completed request or stream, formatted."""
    return _n(1e6 * usage.cpu_s.get(party, 0.0) / count) if count else "-"


def main_rows(res: Results, s: Settings) -> list[list[str]]:
    """Columns: direct, bare proxy, Sluice, Sluice ÷ direct, Sluice ÷ bare, target, result."""
    rows = [["measurement", "direct", "bare proxy", "sluice", "sluice ÷ direct", "sluice ÷ bare"]]
    rows[0] += ["target", "result"]
    ld, lb, ls = (res.lat.get(k) for k in ("direct", "bare", "sluice"))
    if ld and lb and ls:
        for pct in (50, 99):
            d, bp, sl = (x.p50_us if pct == 50 else x.p99_us for x in (ld, lb, ls))
            added = f"{sl - d:+,.0f} µs; {sl - bp:+,.0f} over bare"
            target, verdict = (f"added ≤ {ADDED_P50_TARGET_US} µs", _verdict(sl - d <= ADDED_P50_TARGET_US))
            row = [f"c=1 latency p{pct} (µs)", _n(d), _n(bp), _n(sl), _ratio(d, sl), _ratio(bp, sl)]
            rows.append([*row, *((target, f"{verdict} ({added})") if pct == 50 else ("", f"({added})"))])
    td, tb, ts = (res.tput.get(k) for k in ("direct", "bare", "sluice"))
    if td and tb and ts:
        rows += [
            [
                f"non-stream req/s, c={s.conns}, 1 worker",
                _n(td.rps),
                _n(tb.rps),
                _n(ts.rps),
                _ratio(td.rps, ts.rps),
                _ratio(tb.rps, ts.rps),
                f"Sluice ≥ {SLUICE_TARGET_RPS:,}",
                _verdict(ts.rps >= SLUICE_TARGET_RPS),
            ],
            [
                f"  c={s.conns} latency p50 / p99 (ms)",
                *(f"{t.p50_us / 1000:.1f} / {t.p99_us / 1000:.1f}" for t in (td, tb, ts)),
                "",
                "",
                "",
                "",
            ],
            [
                "  proxy CPU per request (µs)",
                "",
                _cpu_per(tb.usage, "bare", tb.ok),
                _cpu_per(ts.usage, "sluice", ts.ok),
                "",
                "",
                "",
                "",
            ],
            ["  errors (non-2xx, socket)", *(str(t.errors) for t in (td, tb, ts)), "", "", "", ""],
        ]
    sd, sb, ss = (res.streams.get(k) for k in ("direct", "bare", "sluice"))
    if sd and sb and ss:
        offered = s.stream_conns / IDEAL_STREAM_S
        trio = (sd, sb, ss)
        wrong = (
            " / ".join(str(x.wrong_events) for x in trio) + f" had ≠ {PACED_EVENTS} events"
            if any(x.wrong_events for x in trio)
            else ""
        )
        durations = [
            f"{percentile(x.durations_ms, 50):.0f} / {percentile(x.durations_ms, 99):.0f}" for x in trio
        ]
        rows += [
            [
                f"paced streams/s, c={s.stream_conns}",
                _n(sd.per_s),
                _n(sb.per_s),
                _n(ss.per_s),
                _ratio(sd.per_s, ss.per_s),
                _ratio(sb.per_s, ss.per_s),
                "",
                f"offered ≤ {_n(offered)}/s",
            ],
            [
                "  stream duration p50 / p99 (ms)",
                *durations,
                "",
                "",
                "",
                f"ideal {IDEAL_STREAM_S * 1000:.0f} ms",
            ],
            ["  events/s delivered", *(_n(x.per_s * PACED_EVENTS) for x in trio), "", "", "", ""],
            [
                "  proxy CPU per stream (µs)",
                "",
                _cpu_per(sb.usage, "bare", sb.completed),
                _cpu_per(ss.usage, "sluice", ss.completed),
                "",
                "",
                "",
                "",
            ],
            ["  bad streams (error, no [DONE])", *(str(x.bad) for x in trio), "", "", "", wrong],
        ]
    peak, idle = res.rss_peak_mib, res.rss_idle_mib
    if "sluice" in peak and "bare" in peak:
        idle_note = f"idle: bare {idle.get('bare', 0.0):.1f}, sluice {idle.get('sluice', 0.0):.1f}"
        rows.append(
            [
                "peak RSS, VmHWM (MB)",
                "",
                f"{peak['bare']:.1f}",
                f"{peak['sluice']:.1f}",
                "",
                _ratio(peak["bare"], peak["sluice"]),
                f"Sluice < {RSS_TARGET_MB} MB",
                f"{_verdict(peak['sluice'] < RSS_TARGET_MB)} ({idle_note})",
            ]
        )
    cap = res.emu_capacity
    if cap:
        rows.append(
            [
                f"emulator alone, 1 core, c={s.conns} (req/s)",
                _n(cap.rps),
                "",
                "",
                "",
                "",
                f"≥ {EMULATOR_TARGET_RPS:,}",
                _verdict(cap.rps >= EMULATOR_TARGET_RPS),
            ]
        )
    return rows


def usages(res: Results, b: Bench) -> list[tuple[str, Usage]]:
    """Each measurement window's CPU; a Sluice measured in several rounds has one line per round."""
    s = b.settings
    runs: list[tuple[str, Usage]] = []
    if res.emu_capacity:
        runs.append(("emulator capacity", res.emu_capacity.usage))
    sections: tuple[tuple[str, dict[str, Load] | dict[str, Streams], dict[str, Any]], ...] = (
        ("c=1", res.lat, res.lat_rounds),
        (f"c={s.conns}", res.tput, res.tput_rounds),
        (f"paced c={s.stream_conns}", res.streams, res.stream_rounds),
    )
    for prefix, results, rounds in sections:
        for name, v in results.items():
            label = b.labels.get(name, name)
            each = rounds.get(name, [])
            if len(each) > 1:
                runs += [(f"{prefix} {label} #{i}", x.usage) for i, x in enumerate(each, 1)]
            else:
                runs.append((f"{prefix} {label}", v.usage))
    return runs


def cpu_rows(res: Results, b: Bench) -> list[list[str]]:
    runs = usages(res, b)
    ncores = max((len(u.core_busy) for _, u in runs), default=0)
    parties = ["load", "emulator", "bare", "sluice", *(["ref"] if "ref" in res.tput else []), "other"]
    heads = {"load": "client/wrk", "bare": "bare proxy", "sluice": "Sluice", "ref": b.labels["ref"]}
    rows = [["measurement", *(f"cpu{i} busy" for i in range(ncores)), *(heads.get(p, p) for p in parties)]]
    for name, u in runs:
        cells = [f"{u.pct(p):.0f}%" if p in u.cpu_s else "-" for p in parties]
        rows.append([name, *(f"{x:.0f}%" for x in u.core_busy), *cells])
    return rows


def _each(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return " / ".join(fmt(v) for v in values)


def _compare(name: str, head: float, base: float, unit: str, rounds: Sequence[Sequence[float]]) -> list[str]:
    """A row: HEAD's median, the baseline's, HEAD ÷ base, HEAD minus base, then each round of both."""
    diff = "-" if math.isnan(head - base) else f"{head - base:+,.0f} {unit}"
    return [name, _n(head), _n(base), _ratio(base, head), diff, *(_each(r, _n) for r in rounds)]


def baseline_rows(res: Results, b: Bench) -> list[list[str]]:
    """HEAD against the other side (the baseline, or the capped key): medians of the alternated rounds,
    the ratio, and every round."""
    other = b.other
    head, base = b.labels["sluice"], b.labels[other]
    ratio, diff = ("capped ÷ open", "capped minus open") if b.budgets else ("HEAD ÷ base", "HEAD minus base")
    rows = [["measurement", head, base, ratio, diff, f"rounds {head}", f"rounds {base}"]]
    both = ("sluice", other)
    blank = ["", "", "", ""]

    def compare(
        name: str, xs: tuple[float, float], unit: str, rounds: Sequence[Sequence[float]]
    ) -> list[str]:
        # --budgets puts the key without limits first and divides by it, like HEAD ÷ base the other way
        if b.budgets:
            row = _compare(name, xs[1], xs[0], unit, rounds)
            row[1], row[2] = row[2], row[1]
            return row
        return _compare(name, xs[0], xs[1], unit, rounds)

    lh, lr = res.lat.get("sluice"), res.lat.get(other)
    if lh and lr:
        p50s = [[x.p50_us for x in res.lat_rounds[k]] for k in both]
        p99s = [[x.p99_us for x in res.lat_rounds[k]] for k in both]
        rows.append(compare("c=1 latency p50 (µs)", (lh.p50_us, lr.p50_us), "µs", p50s))
        rows.append(compare("c=1 latency p99 (µs)", (lh.p99_us, lr.p99_us), "µs", p99s))
        direct = res.lat.get("direct")
        if direct:
            added = [_n(x.p50_us - direct.p50_us) for x in (lh, lr)]
            rows.append(["  c=1 added p50 over direct (µs)", *added, *blank])
    th, tr = res.tput.get("sluice"), res.tput.get(other)
    if th and tr:
        rps = [[x.rps for x in res.tput_rounds[k]] for k in both]
        cpu = [[1e6 * _cpu_per_unit(x.usage, b.party(k), x.ok) for x in res.tput_rounds[k]] for k in both]
        ch, cr = (1e6 * _cpu_per_unit(x.usage, b.party(k), x.ok) for x, k in zip((th, tr), both, strict=True))
        rows += [
            compare(f"non-stream req/s, c={b.settings.conns}", (th.rps, tr.rps), "req/s", rps),
            compare("  CPU per request (µs)", (ch, cr), "µs", cpu),
            [
                f"  c={b.settings.conns} latency p50 (ms)",
                *(f"{x.p50_us / 1000:.1f}" for x in (th, tr)),
                *blank,
            ],
            ["  errors (non-2xx, socket)", str(th.errors), str(tr.errors), *blank],
        ]
    sh, sr = res.streams.get("sluice"), res.streams.get(other)
    if sh and sr:
        per_s = [[x.per_s for x in res.stream_rounds[k]] for k in both]
        cpu = [
            [1e6 * _cpu_per_unit(x.usage, b.party(k), x.completed) for x in res.stream_rounds[k]]
            for k in both
        ]
        ch, cr = (
            1e6 * _cpu_per_unit(x.usage, b.party(k), x.completed) for x, k in zip((sh, sr), both, strict=True)
        )
        rows += [
            compare(f"paced streams/s, c={b.settings.stream_conns}", (sh.per_s, sr.per_s), "/s", per_s),
            compare("  CPU per stream (µs)", (ch, cr), "µs", cpu),
            ["  bad streams", str(sh.bad), str(sr.bad), *blank],
        ]
    peak = res.rss_peak_mib
    if "sluice" in peak and "ref" in peak:
        h, r = peak["sluice"], peak["ref"]
        rows.append(
            ["peak RSS, VmHWM (MB)", f"{h:.1f}", f"{r:.1f}", _ratio(r, h), f"{h - r:+.1f} MB", "", ""]
        )
    return rows


def baseline_verdict(res: Results, b: Bench) -> list[str]:
    other = b.other
    th, tr = res.tput.get("sluice"), res.tput.get(other)
    lh, lr = res.lat.get("sluice"), res.lat.get(other)
    head, base, n = b.labels["sluice"], b.labels[other], b.settings.rounds
    if b.budgets:
        if not (th and tr and th.rps > 0):
            return []
        cost = 100.0 * (1.0 - tr.rps / th.rps)
        lines = [
            (
                f"budgets cost {cost:.1f} % of the throughput without them ({base} {tr.rps:,.0f} req/s "
                f"against {head} {th.rps:,.0f} req/s at c={b.settings.conns}, median of {n} alternated "
                f"round(s) each): {_verdict(cost < BUDGETS_TARGET_PCT)} (target < {BUDGETS_TARGET_PCT:.0f} %)"
            )
        ]
        if lh and lr:
            lines.append(
                f"c=1 latency, capped key minus key without limits: p50 {lr.p50_us - lh.p50_us:+,.0f} µs, "
                f"p99 {lr.p99_us - lh.p99_us:+,.0f} µs"
            )
        return lines
    if not (th and tr and tr.rps > 0):
        return []
    cost = 100.0 * (1.0 - th.rps / tr.rps)
    lines = [
        (
            f"ledger and pricing cost {cost:.1f} % of pre-issue throughput ({head} {th.rps:,.0f} req/s "
            f"against {base} {tr.rps:,.0f} req/s at c={b.settings.conns}, median of {n} alternated "
            f"round(s) each): {_verdict(cost < BASELINE_TARGET_PCT)} (target < {BASELINE_TARGET_PCT:.0f} %)"
        )
    ]
    if lh and lr:
        lines.append(f"c=1 p50 latency, HEAD minus baseline: {lh.p50_us - lr.p50_us:+,.0f} µs")
    return lines


def budget_line(check: BudgetCheck, key_id: str = "") -> str:
    """The capped key's counters against its ledger rows, one line."""
    verdict = "OK" if check.matches else "MISMATCH"
    return (
        f"capped key{f' {key_id}' if key_id else ''}: {check.rows:,} ledger rows, "
        f"{check.refused:,} refused or failed, {check.disconnected:,} disconnected (left open by wrk); "
        f"key usd/total counter spent {check.key_spent:,} n$, reserved {check.key_reserved:,}; "
        f"ledger sum {check.ledger_nanos:,} n$; {check.user_counters:,} user usd/day counters spent "
        f"{check.users_spent:,} n$ (ledger today {check.ledger_today_nanos:,}), reserved "
        f"{check.users_reserved:,}"
        f"{'' if check.holds is None else f'; {check.holds:,} reservations open in Redis'}: {verdict}"
    )


def ledger_line(check: LedgerCheck, label: str) -> str:
    verdict = "OK" if check.matches else "MISMATCH"
    return (
        f"ledger of {label}: {check.rows:,} rows ({check.ok_rows:,} ok, {check.priced_rows:,} with a cost); "
        f"requests answered per the load tools: {check.answered:,} (+ at most {check.in_flight:,} open when "
        f"a wrk run stopped): {verdict}"
    )


def report(res: Results, b: Bench) -> None:
    s = b.settings
    proxies = (
        "Sluice, the baseline Sluice and the bare proxy" if "ref" in res.tput else "Sluice and the bare proxy"
    )
    layout = (
        f"{proxies} pinned to cpu{b.sluice_cpu}; emulator, clients and wrk to cpu{b.load_cpu}"
        if b.pinned
        else "nothing pinned (fewer than 2 usable cores)"
    )
    tool = "wrk" if b.wrk else "aiohttp (wrk not found or --no-wrk)"
    print()
    print(f"Sluice overhead, {time.strftime('%Y-%m-%d %H:%M:%S')}, Python {platform.python_version()}")
    print(f"{psutil.cpu_count()} CPUs; {layout}")
    print(
        f"non-stream load: {tool}; paced streams: aiohttp ({PACE_SPEC}); "
        f"{s.seconds} s per measurement after {s.warmup} s warm-up"
    )
    rounds = f", median of {s.rounds} rounds" if s.rounds > 1 else ""
    if b.budgets:
        print(
            f"sluice = {b.labels['sluice']} = the working tree (SQLite ledger, memory counters) with a "
            f"virtual key without limits{rounds}; {b.labels['budgets']} = the same Sluice with a key "
            f"capped at $1,000,000 in total and $1,000/day per end user; every request names one of "
            f"{s.users:,} end users (`user`), in turn"
        )
    else:
        print(f"sluice = {b.labels['sluice']} (the working tree){rounds}")
    print()
    print("\n".join(_table(main_rows(res, s), left=(0, 6, 7))))
    if b.other in res.tput:
        print()
        what = "key without limits, capped key" if b.budgets else "HEAD, baseline"
        print(
            f"{b.labels['sluice']} against {b.labels[b.other]}, alternated "
            f"({what}, …; medians of {s.rounds} rounds, then each round):"
        )
        print("\n".join(_table(baseline_rows(res, b), left=(0,))))
        for line in baseline_verdict(res, b):
            print(line)
    if res.budgets:
        print(budget_line(res.budgets))
    if res.ledger:
        print(ledger_line(res.ledger, b.labels["sluice"]))
    print()
    print("CPU during each measurement window (% of one core; 'other' = busy time of other processes):")
    print("\n".join(_table(cpu_rows(res, b))))
    noisy = [(name, u.pct("other")) for name, u in usages(res, b) if u.pct("other") > NOISE_PCT]
    if noisy:
        worst = max(noisy, key=lambda x: x[1])
        res.notes.append(
            f"other processes were busy during {len(noisy)} measurement(s) (up to {worst[1]:.0f}% of a core, "
            f"in '{worst[0]}'); those numbers are low. Rerun on a quiet machine."
        )
    if res.notes:
        print()
        print("Notes:")
        for note in res.notes:
            print(f"  - {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~2 s per measurement (smoke run)")
    parser.add_argument("--stream-concurrency", type=int, default=512, help="paced streams in flight")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp load generator even with wrk")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, logs)")
    parser.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also run the Sluice of git REF (a temporary worktree) and compare it with this one",
    )
    parser.add_argument(
        "--budgets",
        action="store_true",
        help="also measure the same Sluice with a capped key and per-user quotas, alternated with a key "
        "without limits, then check its counters against its ledger",
    )
    parser.add_argument(
        "--users",
        type=int,
        help=f"end users the requests name in turn (default: {BENCH_USERS:,} with --budgets, else none)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="runs of each Sluice, alternating with the baseline or the capped key "
        "(default: 2 with --baseline-ref or --budgets, else 1)",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="the response cache instead: hits, misses and uncached requests, alternated (bench/cache.py)",
    )
    args = parser.parse_args(argv)
    if args.cache:  # one Sluice, three kinds of request: its own script, reached from here too
        import cache  # noqa: PLC0415 - only this mode needs it (and it imports this module)

        return cache.main([*(["--quick"] if args.quick else []), "--rounds", str(args.rounds or 3)])
    if args.budgets and args.baseline_ref:
        parser.error("--budgets and --baseline-ref are separate runs")
    rounds = args.rounds if args.rounds is not None else (2 if args.baseline_ref or args.budgets else 1)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    users = args.users if args.users is not None else (BENCH_USERS if args.budgets else 0)

    stop_children_on_term()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # 512 streams need ~1,100 descriptors in Sluice
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536 if hard == resource.RLIM_INFINITY else hard, hard))

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = len(cores) >= 2
    load_cpu, sluice_cpu = (cores[0], cores[1]) if pinned else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process runs the aiohttp clients; wrk inherits it
    settings = Settings(
        seconds=2 if args.quick else 8,
        warmup=1 if args.quick else 2,
        stream_conns=args.stream_concurrency,
        rounds=rounds,
        users=users,
    )
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    (work / "post.lua").write_text(WRK_LUA)
    (work / "post-many.lua").write_text(WRK_LUA_MANY)
    wrk = None if args.no_wrk else shutil.which("wrk")
    bench = Bench(settings, work, wrk, pinned, load_cpu, sluice_cpu, args.baseline_ref, args.budgets)
    bench.labels["sluice"] = head_label()
    if args.budgets:
        bench.labels["budgets"] = f"{bench.labels['sluice']} capped"
    res = Results()
    failed = run_guarded(work, args.keep, lambda: run(bench, res))
    if failed is not None:
        return failed
    report(res, bench)
    if args.keep:
        print(f"\nwork directory (config, logs): {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
