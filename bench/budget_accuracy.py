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
budget (``max_budget`` with ``budget_duration`` in ``litellm_params``), which is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
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
    start_emulator,
    start_sluice,
    write_config,
)
from vs_litellm import MASTER_KEY, ensure_litellm, litellm_config, start_litellm

CAP = Decimal("1.00")
REQUESTS = 1_000
TOKENS = 2_000


def body() -> bytes:
    return json.dumps(
        {
            "model": ALIAS,
            "messages": [{"role": "user", "content": f"Write a long essay. @emulator(tokens={TOKENS})"}],
            "max_tokens": TOKENS,
        }
    ).encode()


async def burst(url: str, bearer: str, cost_header: str) -> tuple[int, Decimal, dict[int, int]]:
    """Send REQUESTS at once; (served, the sum of their cost headers, count per status)."""
    statuses: dict[int, int] = {}
    spent = Decimal(0)
    served = 0
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=REQUESTS)
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

        await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return served, spent, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    exe = ensure_litellm()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-budget-accuracy-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            emu_port, _ = start_emulator(procs, "emulator", None)
            data = work / "data"
            port, _ = start_sluice(procs, "sluice", write_config(work, emu_port), data, None)
            secret, _key_id = create_key(port, {"name": "capped", "limits": {"usd": {"total": str(CAP)}}})
            print("• Sluice: 1,000 requests at once against a $1.00 key cap …", flush=True)
            url = f"http://127.0.0.1:{port}{CHAT_PATH_SLUICE}"
            served, spent, statuses = asyncio.run(burst(url, secret, "x-sluice-cost-usd"))
            ledger = count_ledger(data / "sluice.db")
            rows = ledger[0] if ledger else 0
            results["sluice"] = _result(served, spent, statuses, missing=max(served - rows, 0), log=True)
            ll_port = free_port()
            start_litellm(procs, exe, litellm_config(work, emu_port, str(CAP)), ll_port)
            print("• LiteLLM: 1,000 requests at once against a $1.00 deployment budget …", flush=True)
            url = f"http://127.0.0.1:{ll_port}{CHAT_PATH_SLUICE}"
            served, spent, statuses = asyncio.run(burst(url, MASTER_KEY, "x-litellm-response-cost"))
            results["litellm"] = _result(served, spent, statuses, missing=served, log=False)
        finally:
            procs.stop_all()
    print(f"\nBudget accuracy: a ${CAP} cap, {REQUESTS:,} concurrent requests of ~$0.0012 each\n")
    print(
        "| proxy | enforced by | served | refused | spent (USD) | overshoot (USD) | spent / cap "
        "| missing from spend log |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, how in (("sluice", "key `limits.usd.total`"), ("litellm", "deployment `max_budget`")):
        r = results[name]
        print(
            f"| {name} | {how} | {r['served']:,} | {r['refused']:,} | {r['spent']} | {r['overshoot']} | "
            f"{r['multiple']} | {r['missing']} |"
        )
    print(json.dumps(results, default=str))
    return 0


def _result(
    served: int, spent: Decimal, statuses: dict[int, int], *, missing: int, log: bool
) -> dict[str, object]:
    overshoot = max(spent - CAP, Decimal(0))
    return {
        "served": served,
        "refused": sum(n for s, n in statuses.items() if s != 200),
        "statuses": statuses,
        "spent": str(spent.quantize(Decimal("0.000001"))),
        "overshoot": str(overshoot.quantize(Decimal("0.000001"))),
        "multiple": f"{spent / CAP:.3f}",
        "missing": f"{missing:,}" if log else f"{missing:,} (no spend log without a database)",
    }


if __name__ == "__main__":
    sys.exit(main())
