"""A smoke run's results, how two runs differ, and the table of both. Pure.

A run holds one report per deployment; a report holds one check per thing tested (``models``,
``complete``, ``stream``, ``stream_usage``, ``json_mode``, ``tool_call``, ``error_shape``,
``rate_limit_headers``, ``pricing``; ``embed`` for embedding models), each ``pass``, ``warn``, ``fail``
or ``skip`` with a sentence and its measurements. Money is nano-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluice.ledger.entry import usd_short

usd = usd_short  # money in reports: nano-dollars as a short decimal USD string, exact
PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
FEATURE = "sluice-smoke"  # the feature of a smoke run's ledger rows (not a workflow of the product)
RUN_SCOPE = "smoke"  # the kind of a run's own cap scope (not a budget to alert on)
CHAT_CHECKS = (
    "models",
    "complete",
    "stream",
    "stream_usage",
    "json_mode",
    "tool_call",
    "error_shape",
    "rate_limit_headers",
    "pricing",
)
EMBED_CHECKS = ("models", "embed", "error_shape", "pricing")
REGRESSIONS = frozenset({"stopped_working", "slower", "shape_changed"})  # drift kinds that fail a run
LIGHT_CHECKS = frozenset({"complete", "stream", "stream_usage"})  # what a canary runs


@dataclass(slots=True)
class Check:
    """One thing tested on one deployment."""

    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # latency_ms, ttft_ms, shape, status, …

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "data": self.data}


@dataclass(slots=True)
class DeploymentReport:
    """Every check on one deployment, and what they burned."""

    id: str  # provider/model
    alias: str
    provider: str
    preset: str
    model: str
    mode: str
    checks: list[Check] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0

    @property
    def status(self) -> str:
        """fail if any check failed, else warn if any warned, else pass."""
        states = {c.status for c in self.checks}
        return FAIL if FAIL in states else WARN if WARN in states else PASS

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alias": self.alias,
            "provider": self.provider,
            "preset": self.preset,
            "model": self.model,
            "mode": self.mode,
            "status": self.status,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd(self.cost_nanos),
            "cost_nanos": self.cost_nanos,
            "checks": [c.as_json() for c in self.checks],
        }


@dataclass(slots=True)
class RunReport:
    """One smoke run."""

    id: str
    started_us: int
    finished_us: int = 0
    cap_nanos: int = 0
    light: bool = False
    deployments: list[DeploymentReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(d.status != FAIL for d in self.deployments)

    @property
    def cost_nanos(self) -> int:
        return sum(d.cost_nanos for d in self.deployments)

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "smoke.run",
            "id": self.id,
            "started_us": self.started_us,
            "finished_us": self.finished_us,
            "ok": self.ok,
            "light": self.light,
            "cap_usd": usd(self.cap_nanos),
            "cost_usd": usd(self.cost_nanos),
            "cost_nanos": self.cost_nanos,
            "input_tokens": sum(d.input_tokens for d in self.deployments),
            "output_tokens": sum(d.output_tokens for d in self.deployments),
            "deployments": [d.as_json() for d in self.deployments],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunReport:
        """A stored run (the inverse of ``as_json``)."""
        run = cls(
            str(raw["id"]),
            int(raw["started_us"]),
            int(raw.get("finished_us") or 0),
            int(raw.get("cap_nanos") or 0),
            bool(raw.get("light")),
        )
        for d in raw.get("deployments") or []:
            rep = DeploymentReport(
                d["id"], d["alias"], d["provider"], d["preset"], d["model"], d["mode"],
                input_tokens=int(d.get("input_tokens") or 0),
                output_tokens=int(d.get("output_tokens") or 0),
                cost_nanos=int(d.get("cost_nanos") or 0),
            )  # fmt: skip
            rep.checks = [
                Check(c["name"], c["status"], c["detail"], dict(c.get("data") or {})) for c in d["checks"]
            ]
            run.deployments.append(rep)
        return run


@dataclass(frozen=True, slots=True)
class Drift:
    """One way a deployment differs from the previous run."""

    deployment: str
    check: str
    kind: str  # stopped_working | recovered | slower | shape_changed | changed | new | gone
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"deployment": self.deployment, "check": self.check, "kind": self.kind, "detail": self.detail}


_TIMINGS = ("latency_ms", "ttft_ms")
_SHAPES = ("shape", "status_code")


def compare(before: RunReport, now: RunReport, *, slower: float = 1.5, min_ms: float = 100.0) -> list[Drift]:
    """What changed since ``before``: a check that stopped working (or recovered), a latency or time to
    first token more than ``slower`` times (and ``min_ms`` more than) before, an error shape or status
    that changed, a deployment that appeared or went away."""
    out: list[Drift] = []
    old = {d.id: d for d in before.deployments}
    for dep in now.deployments:
        prev = old.pop(dep.id, None)
        if prev is None:
            out.append(Drift(dep.id, "", "new", "not in the previous run"))
            continue
        for check in dep.checks:
            was = prev.check(check.name)
            if was is None or SKIP in (check.status, was.status):
                continue
            if was.status != FAIL and check.status == FAIL:
                out.append(Drift(dep.id, check.name, "stopped_working", f"was {was.status}: {check.detail}"))
            elif was.status == FAIL and check.status != FAIL:
                out.append(Drift(dep.id, check.name, "recovered", f"now {check.status}"))
                continue  # its shape changed too: that is how it recovered
            for key in _TIMINGS:
                a, b = was.data.get(key), check.data.get(key)
                if (
                    isinstance(a, (int, float))
                    and isinstance(b, (int, float))
                    and b > a * slower
                    and b - a >= min_ms
                ):
                    out.append(Drift(dep.id, check.name, "slower", f"{key} {a:.0f} → {b:.0f} ms"))
            for key in _SHAPES:  # a changed shape is a regression unless the check now passes
                a, b = was.data.get(key), check.data.get(key)
                if a is not None and b is not None and a != b:
                    kind = "changed" if check.status == PASS else "shape_changed"
                    out.append(Drift(dep.id, check.name, kind, f"{key} {a} → {b}"))
    out += [Drift(dep_id, "", "gone", "in the previous run, not in this one") for dep_id in old]
    return out
