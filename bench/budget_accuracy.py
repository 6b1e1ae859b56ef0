"""Budget accuracy side by side: a $1.00 cap, 1,000 concurrent requests of known cost, on Sluice and on
LiteLLM's proxy.

    .venv/bin/python bench/budget_accuracy.py          # (LiteLLM from bench/.litellm-venv, see vs_litellm.py)

Every request asks for 2,000 completion tokens and the emulator gives exactly that (``tokens=2000``), so
each costs the same, about $0.0012 on gpt-4o-mini: a $1.00 cap has room for about 830 of the 1,000 sent
at once. Measured: the requests each proxy served, what they cost (each answer's own cost header:
``x-sluice-cost-usd``, ``x-litellm-response-cost``), the overshoot in dollars and as a multiple of the
cap, and the served requests missing from each one's spend log.

What each can enforce here: Sluice, a virtual key with ``limits.usd.total: 1.00`` (its defaults: the
SQLite ledger, in-process counters). LiteLLM cannot start its database offline (its Prisma client
downloads query engines at start-up), so it has no virtual keys and no spend log; its proxy-wide
``max_budget`` is not enforced without one. What it enforces offline is the router's per-deployment
budget (``max_budget`` with ``budget_duration`` in ``litellm_params``), which is measured; so is the
proxy-wide ``litellm_settings.max_budget``, to show it is not enforced. ``--sluice-only --requests 40
--cap 0.03`` is the test suite's smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from overhead import (
    ALIAS,
    CHAT_PATH_SLUICE,
    Processes,
    count_ledger,
    create_key,
    free_port,
    run_guarded,
    start_emulator,
    start_sluice,
    stop_children_on_term,
    write_config,
)
from vs_litellm import MASTER_KEY, ensure_litellm, litellm_config, start_litellm

CAP = Decimal("1.00")
REQUESTS = 1_000
TOKENS = 2_000
ENFORCED = {
    "sluice": "key `limits.usd.total`",
    "litellm": "deployment `max_budget` (router)",
    "litellm_proxy": "proxy-wide `litellm_settings.max_budget`",
}


def body() -> bytes:
    return json.dumps(
        {
            "model": ALIAS,
            "messages": [{"role": "user", "content": f"Write a long essay. @emulator(tokens={TOKENS})"}],
            "max_tokens": TOKENS,
        }
    ).encode()


async def burst(url: str, bearer: str, cost_header: str, n: int) -> tuple[int, Decimal, dict[int, int]]:
    """Send ``n`` requests at once; (served, the sum of their cost headers, count per status)."""
    statuses: dict[int, int] = {}
    spent = Decimal(0)
    served = 0
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=n)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def one() -> None:
            nonlocal spent, served
            try:
                async with session.post(url, data=body()) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        served += 1
                        spent += Decimal(resp.headers.get(cost_header, "0") or "0")
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] = statuses.get(0, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    return served, spent, statuses


def measure(
    procs: Processes,
    work: Path,
    exe: Path | None,
    cap: Decimal,
    n: int,
    results: dict[str, dict[str, object]],
) -> None:
    """``n`` requests at once on Sluice against a key capped at ``cap``, then (``exe``) on LiteLLM with a
    deployment budget and with a proxy-wide budget of ``cap``; each one's result into ``results``."""
    emu_port, _ = start_emulator(procs, "emulator", None)
    data = work / "data"
    port, sluice = start_sluice(procs, "sluice", write_config(work, emu_port), data, None)
    secret, _key_id = create_key(port, {"name": "capped", "limits": {"usd": {"total": str(cap)}}})
    print(f"• Sluice: {n:,} requests at once against a ${cap} key cap …", flush=True)
    url = f"http://127.0.0.1:{port}{CHAT_PATH_SLUICE}"
    served, spent, statuses = asyncio.run(burst(url, secret, "x-sluice-cost-usd", n))
    procs.stop(sluice)  # a graceful stop commits the ledger's queue
    ledger = count_ledger(data / "sluice.db")
    answered = ledger[1] if ledger else 0
    results["sluice"] = _result(served, spent, statuses, cap, missing=max(served - answered, 0), log=True)
    if exe is not None:
        for name, config in (
            ("litellm", litellm_config(work, emu_port, budget_usd=str(cap))),
            ("litellm_proxy", litellm_config(work, emu_port, proxy_budget_usd=str(cap))),
        ):
            ll_port = free_port()
            proxy, _ = start_litellm(procs, exe, config, ll_port, cpu=None)
            print(f"• LiteLLM ({ENFORCED[name]}): {n:,} requests at once …", flush=True)
            url = f"http://127.0.0.1:{ll_port}{CHAT_PATH_SLUICE}"
            served, spent, statuses = asyncio.run(burst(url, MASTER_KEY, "x-litellm-response-cost", n))
            results[name] = _result(served, spent, statuses, cap, missing=served, log=False)
            procs.stop(proxy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=REQUESTS, help="sent at once (default 1,000)")
    parser.add_argument("--cap", type=Decimal, default=CAP, help="USD (default 1.00)")
    parser.add_argument("--sluice-only", action="store_true", help="skip LiteLLM (the test suite's smoke)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON goes")
    args = parser.parse_args(argv)
    cap: Decimal = args.cap
    exe = None if args.sluice_only else ensure_litellm()
    results: dict[str, dict[str, object]] = {}
    stop_children_on_term()
    work = Path(tempfile.mkdtemp(prefix="sluice-budget-accuracy-"))
    procs = Processes(work)
    failed = run_guarded(
        work, False, lambda: measure(procs, work, exe, cap, args.requests, results), procs.stop_all
    )
    if failed is not None:
        return failed
    print(f"\nBudget accuracy: a ${cap} cap, {args.requests:,} concurrent requests of ~$0.0012 each\n")
    print(
        "| proxy | enforced by | served | refused | spent (USD) | overshoot (USD) | spent / cap "
        "| missing from spend log |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {ENFORCED[name]} | {r['served']:,} | {r['refused']:,} | {r['spent']} | "
            f"{r['overshoot']} | {r['multiple']} | {r['missing']} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("budget-accuracy-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps({"cap": str(cap), "requests": args.requests, "results": results}, default=str))
    print(f"\nJSON: {path}")
    return 0


def _result(
    served: int, spent: Decimal, statuses: dict[int, int], cap: Decimal, *, missing: int, log: bool
) -> dict[str, object]:
    overshoot = max(spent - cap, Decimal(0))
    return {
        "served": served,
        "refused": sum(n for s, n in statuses.items() if s != 200),
        "statuses": statuses,
        "spent": str(spent.quantize(Decimal("0.000001"))),
        "overshoot": str(overshoot.quantize(Decimal("0.000001"))),
        "multiple": f"{spent / cap:.3f}",
        "missing": f"{missing:,}" if log else f"{missing:,} (no spend log without a database)",
    }


if __name__ == "__main__":
    sys.exit(main())
