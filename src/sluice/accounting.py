"""Settlement: the one place a request's cost is decided and its ledger row handed over.

Every request that passed admission is settled exactly once, whatever happened:
- answered with usage → priced from the provider's usage (its own billed amount when it states one);
- never reached a provider (refused, provider unreachable) or the provider answered an error status
  → nothing is charged (providers do not bill refused requests);
- reached the provider but did not finish (stream cut, client gone, timeout, usage missing) → priced
  from what the provider reported plus what was delivered, and flagged ``usage_estimated``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sluice.errors import ModelUnpriced, SluiceError
from sluice.keys.policy import Attribution
from sluice.keys.service import Principal
from sluice.ledger.entry import OK, REFUSED, Entry
from sluice.ledger.sink import Content, Ledger
from sluice.limits.limiter import Limiter
from sluice.metrics import Metrics
from sluice.pricing.cost import Charge
from sluice.pricing.usage import TokenUsage, estimated

log = logging.getLogger("sluice.accounting")
UNREACHABLE = "upstream_unreachable"


class Accounting:
    """Opens entries at admission and settles them; hands rows to the ledger and counts metrics."""

    def __init__(self, ledger: Ledger, metrics: Metrics, limiter: Limiter) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.limiter = limiter
        # unix µs: the one clock that dates rows and decides budget periods (the counters' clock)
        self.clock = limiter.counters.clock
        self.on_settled: Callable[[Entry], None] | None = None  # the alerts' note of a settlement

    def begin(
        self,
        request_id: str,
        principal: Principal,
        endpoint: str,
        alias: str,
        stream: bool,
        who: Attribution,
        body_bytes: int,
        started_ns: int,
    ) -> Entry:
        """The entry for an admitted request (nothing is written until a provider may be called)."""
        team = principal.policy.team
        return Entry(
            request_id=request_id,
            ts_us=self.clock(),
            endpoint=endpoint,
            alias=alias,
            stream=stream,
            key_id=principal.key_id,
            user=who.user,
            team=team,
            feature=who.feature,
            tags=who.tags,
            started_ns=started_ns,
            input_estimate=-(-body_bytes // 4),  # ~4 bytes of JSON per prompt token: errs high
            body_bytes=body_bytes,
            scopes=self.limiter.scopes(principal.key_id, principal.limits, who.user, team, who.feature),
        )

    def settle(
        self,
        entry: Entry,
        status: str,
        http_status: int,
        *,
        error: SluiceError | None = None,
        tokens: TokenUsage | None = None,
        delivered: int = 0,
        charge: Charge | None = None,
        content: Content | None = None,
    ) -> None:
        """Price and record the request's final state (once: a second call is ignored)."""
        if entry.settled:
            return
        entry.status = status
        entry.http_status = http_status
        entry.error_code = error.code if error is not None else None
        entry.latency_us = (time.perf_counter_ns() - entry.started_ns) // 1000
        if tokens is not None:
            entry.usage = tokens
        if charge is None:
            charge = self._charge(entry, status, error, tokens, delivered)
        if charge is not None:
            entry.cost_nanos = charge.nanos
            entry.price_source = charge.source
            entry.at_ceiling = charge.at_ceiling
        if entry.prior_nanos:  # attempts before this one that the provider may have billed (estimated)
            entry.cost_nanos += entry.prior_nanos
            entry.usage_estimated = True
            entry.price_source = entry.price_source or "estimate"
        self.limiter.settle(entry)
        self.ledger.settle(entry, content)
        self.metrics.observe(entry)
        if self.on_settled is not None:
            self.on_settled(entry)

    def _charge(
        self,
        entry: Entry,
        status: str,
        error: SluiceError | None,
        tokens: TokenUsage | None,
        delivered: int,
    ) -> Charge | None:
        pricer = entry.pricer
        if pricer is None or status == REFUSED or (error is not None and error.code == UNREACHABLE):
            return None  # never reached a provider
        if entry.upstream_status not in (0, 200):
            return None  # the provider answered with an error: not billed
        usage = tokens
        if status != OK or usage is None:
            usage = estimated(tokens, entry.input_estimate, delivered)
            entry.usage_estimated = True
        entry.usage = usage
        try:
            return pricer.charge(usage, entry.ts_us)
        except ModelUnpriced:  # admission refuses these; a config reload could race it
            log.exception("request %s reached an unpriced model", entry.request_id)
            return None
