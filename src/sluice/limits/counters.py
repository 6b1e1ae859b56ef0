"""Counters and reservations: the check that keeps ``spent + reserved ≤ limit`` on every scope.

``reserve`` checks every limit of every scope a request counts in and, only if all have room, adds the
request's worst case to each of them — all or nothing. ``settle`` later replaces each reserved amount
with the actual one. ``MemoryCounters`` keeps the counters in this process: the event loop runs a whole
``reserve`` without yielding, so it is atomic with respect to every other request. (Several processes
share counters through Redis instead: ``sluice.limits.redis``.)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sluice.errors import BudgetExceeded, LimitReached, SluiceError
from sluice.ledger.entry import usd_text, wall_clock_us
from sluice.limits.spec import (
    CONCURRENT,
    MINUTE,
    NOW,
    REQUESTS,
    TOKENS,
    USD,
    USER,
    Calendar,
    Limit,
    Scope,
    Window,
    reset_text,
)

CounterKey = tuple[str, str, str]  # (scope id, metric, window key)


@dataclass(frozen=True, slots=True)
class Need:
    """What one request asks of every counter: its worst-case cost and tokens, one request, one slot."""

    nanos: int
    tokens: int

    def of(self, metric: str) -> int:
        """The amount for a metric."""
        if metric == USD:
            return self.nanos
        if metric == TOKENS:
            return self.tokens
        return 1  # requests, concurrent


@dataclass(frozen=True, slots=True)
class Room:
    """How much room a limit had left after a reservation, for response headers."""

    scope: Scope
    limit: Limit
    remaining: int
    window: Window


@dataclass(slots=True)
class Hold:
    """A request's reservation: the counters it reserved on and how much; settled exactly once."""

    need: Need
    parts: list[tuple[Any, str, int]]  # (the backend's handle on a counter, metric, amount reserved)
    rooms: list[Room] = field(default_factory=list)
    settled: bool = False
    token: str = ""  # the backend's id for the reservation (Redis: its record)


Loaded = list[tuple[CounterKey, int, int]]  # (counter, spent, window end µs; 0 = never)


@runtime_checkable
class Claims(Protocol):
    """Counters shared by several instances can also elect one of them to do a thing once."""

    async def claim_once(self, name: str, ttl_s: int) -> bool: ...


class Counters(Protocol):
    """Where counters live (this process, or Redis shared by many)."""

    remote: bool  # reserving awaits the network (a cancelled request may leave a reservation to release)

    async def start(self, source: Callable[[], Awaitable[Loaded]]) -> None:
        """Begin serving; ``source`` computes every counter from the ledger (a backend calls it at start,
        or — Redis — whenever the shared counters were lost)."""
        ...

    async def close(self) -> None:
        """Stop background work (settlements still queued are sent first where possible)."""
        ...

    def clock(self) -> int:
        """Now, in unix µs, by the clock that decides periods (one clock for every instance)."""
        ...

    async def reserve(self, scopes: Sequence[Scope], need: Need, ts_us: int) -> Hold:
        """Reserve ``need`` on every limit of every scope, or raise the refusal of the first that is full
        (``CountersUnavailable`` when the counters cannot be reached: fail closed)."""
        ...

    def settle(self, hold: Hold, nanos: int, tokens: int) -> None:
        """Replace the reservation with what the request actually cost and used (once)."""
        ...

    async def replace(self, scopes: set[str], prefix: str, loaded: Loaded, now_us: int) -> None:
        """Forget the counters of ``scopes`` and of scopes starting with ``prefix``, then set ``loaded``
        (a key's limits changed)."""
        ...

    async def read(self, prefix: str) -> list[tuple[CounterKey, int, int]]:
        """(counter, spent, reserved) for every counter of scopes whose id starts with ``prefix``."""
        ...

    async def spent(self, keys: Sequence[CounterKey]) -> list[int]:
        """The settled amount of each counter (0 for one that does not exist): what alerts look at."""
        ...

    async def claim_reload(self, key_id: str, fingerprint: str) -> bool:
        """True if the caller should (re)load the key's counters for the limits ``fingerprint`` names:
        always in one process; with shared counters, only the first instance to see those limits."""
        ...


_UNSAFE = re.compile(r"[^\x20-\x7e]")


def header_safe(text: str) -> str:
    """Printable ASCII only (an end user's id is client input: no line breaks into a header)."""
    if text.isascii() and text.isprintable() and len(text) <= 300:
        return text
    return _UNSAFE.sub("?", text)[:300]


def refusal(room: Room, used: int, need: int, now_us: int) -> SluiceError:
    """The 429 for a full limit: which scope, which limit, how full, and when it resets (the room rides on
    the error, ``detail``, with what the request needed, for whoever watches refusals: the alerts)."""
    err = _refusal(room, used, need, now_us)
    err.detail = (room, need)
    return err


def _refusal(room: Room, used: int, need: int, now_us: int) -> SluiceError:
    scope, limit, window = room.scope, room.limit, room.window
    headers = {
        "x-sluice-limit-scope": header_safe(scope.id),
        "x-sluice-limit": limit.describe(),
        "x-sluice-limit-reset": reset_text(window),
    }
    if limit.period == NOW:
        return LimitReached(
            f"Concurrency limit reached: {scope.label} allows {limit.amount} requests at once. "
            "Retry when one finishes.",
            code="concurrency_limit_exceeded",
            headers={**headers, "retry-after": "1"},
        )
    if limit.period == MINUTE:
        wait = max(1, -(-(window.end_us - now_us) // 1_000_000))
        what = "requests" if limit.metric == REQUESTS else "tokens"
        return LimitReached(
            f"Rate limit reached: {scope.label} allows {limit.amount} {what} per minute "
            f"({used} used, this request needs up to {need}). Retry in {wait} s.",
            headers={**headers, "retry-after": str(wait)},
        )
    amount, spent, asked = (
        (f"${usd_text(limit.amount)}", f"${usd_text(used)}", f"${usd_text(need)}")
        if limit.metric == USD
        else (f"{limit.amount} {limit.metric}", f"{used}", f"{need}")
    )
    period = "in total" if limit.period == "total" else f"per {limit.period}"
    resets = "It does not reset." if window.end_us == 0 else f"It resets at {reset_text(window)}."
    if limit.metric != REQUESTS:
        resets += " A lower max_tokens makes a request reserve less."
    return BudgetExceeded(
        f"{'Quota' if scope.kind == USER else 'Budget'} exceeded: {scope.label} may use {amount} {period}; "
        f"{spent} is spent or reserved and this request may need up to {asked}. {resets}",
        code="user_quota_exceeded" if scope.kind == USER else "budget_exceeded",
        headers=headers,
    )


class MemoryCounters:
    """Counters in this process (one worker). ``spent`` and ``reserved`` per counter, in integers."""

    remote = False

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._cells: dict[CounterKey, list[int]] = {}  # counter → [spent, reserved, window end µs]
        self._calendar = Calendar()
        self._swept_until = 0
        self.clock = clock or wall_clock_us

    async def start(self, source: Callable[[], Awaitable[Loaded]]) -> None:
        """Load every counter from the ledger."""
        self.load(await source())

    async def close(self) -> None:
        """Nothing runs in the background."""

    async def reserve(self, scopes: Sequence[Scope], need: Need, ts_us: int) -> Hold:
        """All or nothing, without yielding to the event loop (so no other request interleaves)."""
        return self.reserve_now(scopes, need, ts_us)

    def reserve_now(self, scopes: Sequence[Scope], need: Need, ts_us: int) -> Hold:
        """``reserve``, synchronously."""
        windows = self._calendar.windows(ts_us)
        if ts_us >= self._swept_until:
            self._sweep(ts_us)
            self._swept_until = windows[MINUTE].end_us
        cells = self._cells
        parts: list[tuple[Any, str, int]] = []
        rooms: list[Room] = []
        for scope in scopes:
            for limit in scope.limits:
                window = windows[limit.period]
                key = (scope.id, limit.metric, window.key)
                cell = cells.get(key)
                if cell is None:
                    cell = cells[key] = [0, 0, window.end_us]
                amount = need.of(limit.metric)
                used = cell[0] + cell[1]
                room = Room(scope, limit, limit.amount - used - amount, window)
                if room.remaining < 0:
                    raise refusal(room, used, amount, ts_us)
                parts.append((cell, limit.metric, amount))
                rooms.append(room)
        for cell, _metric, amount in parts:
            cell[1] += amount
        return Hold(need, parts, rooms)

    def settle(self, hold: Hold, nanos: int, tokens: int) -> None:
        """Move each reserved amount to spent, at the actual value (concurrency slots are released)."""
        if hold.settled:
            return
        hold.settled = True
        for cell, metric, amount in hold.parts:  # a cell dropped meanwhile (its limit removed) is unseen
            cell[1] -= amount
            if metric == USD:
                cell[0] += nanos
            elif metric == TOKENS:
                cell[0] += tokens
            elif metric != CONCURRENT:
                cell[0] += 1

    def load(self, totals: Iterable[tuple[CounterKey, int, int]]) -> None:
        """Spent amounts from the ledger; reservations of requests in flight are kept."""
        for key, spent, end_us in totals:
            cell = self._cells.get(key)
            if cell is None:
                self._cells[key] = [spent, 0, end_us]
            else:
                cell[0] = spent

    async def replace(self, scopes: set[str], prefix: str, loaded: Loaded, now_us: int) -> None:
        """Drop the scopes' counters (a reservation in flight keeps its own cell, now unseen) and load."""
        for key in [k for k in self._cells if k[0] in scopes or k[0].startswith(prefix)]:
            del self._cells[key]
        self.load(loaded)

    async def claim_reload(self, key_id: str, fingerprint: str) -> bool:
        """One process: its own view of a key's limits decides (see ``KeyService``)."""
        return True

    async def spent(self, keys: Sequence[CounterKey]) -> list[int]:
        """The settled amount of each counter."""
        cells = self._cells
        return [cell[0] if (cell := cells.get(key)) is not None else 0 for key in keys]

    async def read(self, prefix: str) -> list[tuple[CounterKey, int, int]]:
        """The counters of the matching scopes, sorted."""
        return sorted((k, c[0], c[1]) for k, c in self._cells.items() if k[0].startswith(prefix))

    def _sweep(self, now_us: int) -> None:
        """Forget counters whose window ended and that hold no reservation (old minutes and days)."""
        dead = [k for k, c in self._cells.items() if 0 < c[2] <= now_us and c[1] == 0]
        for key in dead:
            del self._cells[key]


def _duration(us: int) -> str:
    """OpenAI's reset format: ``1m30s``, ``12s``."""
    seconds = max(0, -(-us // 1_000_000))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def limit_headers(hold: Hold, now_us: int, cost_nanos: int | None = None) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-*`` for the tightest per-minute limits, and the tightest dollar budget's remainder.

    Remainders are as of this request's admission; once the request is settled (``cost_nanos`` given),
    the dollar remainder gives back what the worst case reserved beyond the actual cost.
    """
    tightest: dict[tuple[str, str], Room] = {}
    for room in hold.rooms:
        limit = room.limit
        if limit.period == MINUTE or limit.metric == USD:
            which = (limit.metric, MINUTE if limit.period == MINUTE else "budget")
            best = tightest.get(which)
            if best is None or room.remaining < best.remaining:
                tightest[which] = room
    out: list[tuple[bytes, bytes]] = []
    for (metric, span), room in tightest.items():
        if span == MINUTE:
            name = b"requests" if metric == REQUESTS else b"tokens"
            out += [
                (b"x-ratelimit-limit-" + name, b"%d" % room.limit.amount),
                (b"x-ratelimit-remaining-" + name, b"%d" % max(room.remaining, 0)),
                (b"x-ratelimit-reset-" + name, _duration(room.window.end_us - now_us).encode()),
            ]
        elif metric == USD:
            remaining = room.remaining
            if cost_nanos is not None:
                remaining += hold.need.nanos - cost_nanos
            scope = header_safe(room.scope.id)
            out += [
                (b"x-sluice-budget-remaining-usd", usd_text(max(remaining, 0)).encode()),
                (
                    b"x-sluice-budget-scope",
                    f"{scope} {room.limit.describe()} {reset_text(room.window)}".encode(),
                ),
            ]
    return out
