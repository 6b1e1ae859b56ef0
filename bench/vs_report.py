"""The report of bench/vs_litellm.py: medians with their spread, ratios per round, the targets, JSON lines,
a Markdown table (printed and written) and a PNG chart; with ``--compare``, whether each ratio of this
run falls within the spread an earlier run reported."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from overhead import PACED_EVENTS, Load, Streams


@dataclass(slots=True)
class Facts:
    """One server in one round: seconds from spawn to its first answer, and peak RSS (MiB)."""

    start_s: float = 0.0
    rss_mb: float = 0.0
    restart_s: float = 0.0  # Sluice: again, with the data directory of the first start


@dataclass(slots=True)
class Round:
    """Everything one round measured."""

    loads: dict[tuple[str, int], Load] = field(default_factory=dict)
    streams: dict[str, Streams] = field(default_factory=dict)
    ttfb_us: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Facts] = field(default_factory=dict)


SERVER = {"sluice": "sluice", "sluice_open": "sluice", "litellm": "litellm", "bare": "bare"}


def metrics(rnd: Round, name: str) -> dict[str, float]:
    """One target's numbers in one round."""
    party = SERVER.get(name, name)
    c1, c64, run = rnd.loads[(name, 1)], rnd.loads[(name, 64)], rnd.streams[name]
    ranked = sorted(run.durations_ms)
    row = {
        "c1_p50_us": c1.p50_us,
        "c1_p99_us": c1.p99_us,
        "c64_rps": c64.rps,
        "streams_per_s": run.per_s,
        "events_per_s": run.events / run.seconds if run.seconds else 0.0,
        "stream_p99_ms": ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))] if ranked else 0.0,
        "bad_streams": float(run.bad),
        "ttfb_us": rnd.ttfb_us[name],
    }
    if name != "direct":
        if c64.ok:
            row["c64_cpu_us"] = 1e6 * c64.usage.cpu_s.get(party, 0.0) / c64.ok
        if run.events:  # CPU per relayed event x a stream's 23: steady even when streams outlast the window
            row["stream_cpu_us"] = 1e6 * run.usage.cpu_s.get(party, 0.0) / run.events * PACED_EVENTS
    if party in rnd.facts and name != "sluice_open":
        row["rss_mb"] = rnd.facts[party].rss_mb
        row["start_s"] = rnd.facts[party].start_s
        if rnd.facts[party].restart_s:
            row["restart_s"] = rnd.facts[party].restart_s
    return row


def _added(per: dict[str, float], direct: dict[str, float]) -> float:
    return per["c1_p50_us"] - direct["c1_p50_us"]


# (key, label, per-round value of the compared pair (ours, theirs), target as "at least" / "at most")
Ratio = tuple[str, str, Callable[[dict[str, float], dict[str, float]], float], str, float]
RATIOS: list[Ratio] = [
    ("c64_rps", "non-stream req/s at c=64 (higher is better)", lambda m, _d: m["c64_rps"], "at least", 40.0),
    ("added_p50_us", "added p50 latency at c=1", _added, "at most", 1 / 20),
    ("c64_cpu_us", "CPU per request at c=64", lambda m, _d: m["c64_cpu_us"], "", 0.0),
    ("stream_cpu_us", "CPU per paced stream", lambda m, _d: m["stream_cpu_us"], "at most", 1 / 20),
    ("ttfb_us", "time to first byte", lambda m, _d: m["ttfb_us"], "", 0.0),
    ("rss_mb", "peak RSS per worker", lambda m, _d: m["rss_mb"], "at most", 1 / 5),
    ("start_s", "start to first answer", lambda m, _d: m["start_s"], "at most", 1 / 10),
]

ROWS: list[tuple[str, str, int]] = [  # key, label, decimals
    ("c1_p50_us", "c=1 p50 (µs)", 0),
    ("added_p50_us", "c=1 added p50 over direct (µs)", 0),
    ("c1_p99_us", "c=1 p99 (µs)", 0),
    ("c64_rps", "c=64 req/s", 0),
    ("c64_cpu_us", "CPU per request at c=64 (µs)", 0),
    ("streams_per_s", "paced streams/s", 0),
    ("events_per_s", "paced events/s", 0),
    ("stream_p99_ms", "stream duration p99 (ms)", 0),
    ("stream_cpu_us", "CPU per stream: per relayed event x 23 (µs)", 0),
    ("bad_streams", "failed streams (a round)", 0),
    ("ttfb_us", "time to first byte, c=1 (µs)", 0),
    ("rss_mb", "peak RSS per worker (MB)", 0),
    ("start_s", "start to first answer, new data directory (s)", 2),
    ("restart_s", "restart to first answer, same data directory (s)", 2),
]


def _spread(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    text = f"{med:,.{digits}f}"
    if len(values) > 1 and max(values) != min(values):
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def _ratio_text(values: list[float]) -> str:
    med = statistics.median(values)
    digits = 1 if med >= 10 else 3
    text = f"{med:.{digits}f}x"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


@dataclass(slots=True)
class Summary:
    """Per target and metric, every round's value; per ratio, every round's ratio."""

    values: dict[str, dict[str, list[float]]]
    ratios: dict[str, list[float]]
    direct_ratios: dict[str, list[float]]
    targets: list[dict[str, object]]


def summarize(rounds: list[Round], rival: str) -> Summary:
    names = ["direct", "sluice", "sluice_open", rival]
    values: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    ratios: dict[str, list[float]] = {}
    direct_ratios: dict[str, list[float]] = {}
    for rnd in rounds:
        per = {n: metrics(rnd, n) for n in names}
        for n in names[1:]:
            per[n]["added_p50_us"] = _added(per[n], per["direct"])
        for n, row in per.items():
            for key, v in row.items():
                values[n].setdefault(key, []).append(v)
        for key, _label, pick, _how, _goal in RATIOS:
            try:
                ours, theirs = pick(per["sluice"], per["direct"]), pick(per[rival], per["direct"])
            except KeyError:  # not measured in this round (no stream completed)
                continue
            if theirs:
                ratios.setdefault(key, []).append(ours / theirs)
        for key in ("c1_p50_us", "c64_rps", "streams_per_s", "ttfb_us"):
            direct = per["direct"][key]
            direct_ratios.setdefault(key, []).append(per["sluice"][key] / direct if direct else 0.0)
    targets: list[dict[str, object]] = []
    for key, label, _pick, how, goal in RATIOS:
        if not how:
            continue
        if not ratios.get(key):
            targets.append(
                {"key": key, "label": label, "ratio": None, "target": goal, "how": how, "met": None}
            )
            continue
        got = statistics.median(ratios[key])
        ok = got >= goal if how == "at least" else got <= goal
        short = got / goal if how == "at least" else goal / got if got else 0.0
        targets.append({"key": key, "label": label, "ratio": got, "target": goal, "how": how, "met": ok,
                        "achieved_share": short})  # fmt: skip
    return Summary(values, ratios, direct_ratios, targets)


def _markdown(s: Summary, rival: str, rival_label: str, sizes: dict[str, float], n: int) -> list[str]:
    out = [
        f"Sluice against {rival_label}: medians of {n} round(s), (min-max) across rounds; ratios per round",
        "",
        (
            "| measurement | direct | Sluice (budgets + ledger) | Sluice (ledger, no budgets) "
            f"| {rival_label} | Sluice ÷ {rival} | Sluice ÷ direct |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    ratio_of = {key: s.ratios[key] for key, *_ in RATIOS if s.ratios.get(key)}
    for key, label, digits in ROWS:
        cells = []
        for name in ("direct", "sluice", "sluice_open", rival):
            got = s.values[name].get(key)
            cells.append(_spread(got, digits) if got else "-")
        vs_rival = _ratio_text(ratio_of[key]) if key in ratio_of else "-"
        vs_direct = _ratio_text(s.direct_ratios[key]) if key in s.direct_ratios else "-"
        out.append(f"| {label} | {' | '.join(cells)} | {vs_rival} | {vs_direct} |")
    if rival in sizes:
        size_ratio = sizes["sluice"] / sizes[rival]
        out.append(
            f"| installed size, with what it needs (MB) | - | {sizes['sluice']:,.0f} | - "
            f"| {sizes[rival]:,.0f} | {size_ratio:.2f}x | - |"
        )
    out += [
        "",
        "| target (Sluice with budgets and ledger ÷ rival) | needed | measured | verdict |",
        "|---|---|---|---|",
    ]
    for t in s.targets:
        goal = float(str(t["target"]))
        need = f"≥ {goal:g}x" if t["how"] == "at least" else f"≤ 1/{1 / goal:g}"
        if t["met"] is None:
            out.append(f"| {t['label']} | {need} | - | not measured (nothing completed in the window) |")
            continue
        ratio = float(str(t["ratio"]))
        shown = f"{ratio:.1f}x" if t["how"] == "at least" else f"1/{1 / ratio:.1f}" if ratio else "-"
        share = 100 * float(str(t["achieved_share"]))
        verdict = "met" if t["met"] else f"missed (reached {share:.0f} % of the target)"
        out.append(f"| {t['label']} | {need} | {shown} | {verdict} |")
    return out


def _ratios_of(path: Path) -> dict[str, list[float]]:
    """The per-round ratios a run wrote (its JSON lines' last line)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    ratios: dict[str, list[float]] = json.loads(lines[-1]).get("ratios", {})
    return ratios


def reproduction(before: dict[str, list[float]], now: dict[str, list[float]], name: str) -> list[str]:
    """Does each ratio of a run fall within the spread (min-max across rounds) of an earlier one?

    ``yes``: this run's median lies within the earlier run's spread, or the earlier median within this
    one's; ``overlaps``: neither, but the two spreads overlap (the medians moved by about the noise of
    three rounds); ``NO``: the spreads are apart."""
    out = ["", f"Reproduction against {name}:", "", "| ratio | earlier (min-max) | now | within the spread |",
           "|---|---|---|---|"]  # fmt: skip
    for key, label, *_ in RATIOS:
        old, new = before.get(key), now.get(key)
        if not old or not new:
            continue
        if min(old) <= statistics.median(new) <= max(old) or min(new) <= statistics.median(old) <= max(new):
            verdict = "yes"
        elif min(new) <= max(old) and min(old) <= max(new):
            verdict = "overlaps"
        else:
            verdict = "NO"
        out.append(f"| {label} | {_ratio_text(old)} | {_ratio_text(new)} | {verdict} |")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python bench/vs_report.py EARLIER.jsonl LATER.jsonl``: the reproduction table of two runs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(main.__doc__)
        return 2
    earlier, later = map(Path, args)
    print("\n".join(reproduction(_ratios_of(earlier), _ratios_of(later), earlier.name)))
    return 0


def report(
    rounds: list[Round],
    sizes: dict[str, float],
    rival: str,
    version: str,
    out: Path,
    stamp: str,
    compare: Path | None,
    profiles: dict[str, Path],
) -> Path:
    """Write the JSON lines, the Markdown table and the chart; print the table. Returns the JSON path."""
    s = summarize(rounds, rival)
    rival_label = f"LiteLLM {version}" if rival == "litellm" else "bare proxy"
    path = out / f"litellm-{stamp}.jsonl"
    with path.open("w") as f:
        for name, per in s.values.items():
            for key, got in per.items():
                f.write(json.dumps({"target": name, "metric": key, "rounds": got}) + "\n")
        f.write(
            json.dumps(
                {
                    "rival": rival,
                    "version": version if rival == "litellm" else None,
                    "sizes_mb": sizes,
                    "medians": {
                        n: {k: statistics.median(v) for k, v in per.items()} for n, per in s.values.items()
                    },
                    "ratios": s.ratios,
                    "sluice_over_direct": s.direct_ratios,
                    "targets": s.targets,
                    "profiles": {k: str(v) for k, v in profiles.items()},
                }
            )
            + "\n"
        )
    lines = _markdown(s, rival, rival_label, sizes, len(rounds))
    if compare is not None:
        lines += reproduction(_ratios_of(compare), s.ratios, compare.name)
    if profiles:
        lines += ["", "Profiles: " + ", ".join(str(p) for p in profiles.values())]
    text = "\n".join(lines) + "\n"
    path.with_suffix(".md").write_text(text)
    print("\n" + text)
    chart(s, rival, rival_label, path.with_suffix(".png"))
    print(f"JSON lines: {path}\nMarkdown: {path.with_suffix('.md')}\nchart: {path.with_suffix('.png')}")
    return path


def chart(s: Summary, rival: str, rival_label: str, path: Path) -> None:
    """Six panels, each with the two Sluice variants beside the rival (medians, whiskers: min-max)."""
    import matplotlib as mpl  # noqa: PLC0415 - only the report needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = ["sluice", "sluice_open", rival]
    labels = ["Sluice\nbudgets", "Sluice\nno budgets", rival_label.replace(" ", "\n", 1)]
    panels = [
        ("non-stream req/s, c=64\n(higher is better)", "c64_rps"),
        ("added p50 latency, c=1, µs", "added_p50_us"),
        ("CPU per request, µs", "c64_cpu_us"),
        ("CPU per paced stream, µs", "stream_cpu_us"),
        ("peak RSS per worker, MB", "rss_mb"),
        ("start to first answer, s", "start_s"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 3.8))
    for ax, (title, key) in zip(axes, panels, strict=True):
        shown = [
            (lab, s.values[n].get(key)) for lab, n in zip(labels, names, strict=True) if s.values[n].get(key)
        ]
        meds = [statistics.median(v or [0.0]) for _, v in shown]
        low = [m - min(v or [0.0]) for m, (_, v) in zip(meds, shown, strict=True)]
        high = [max(v or [0.0]) - m for m, (_, v) in zip(meds, shown, strict=True)]
        colors = ["#2da44e", "#7ee2a8", "#8c959f"][: len(shown)]
        bars = ax.bar([lab for lab, _ in shown], meds, yerr=[low, high], color=colors, capsize=3)
        ax.bar_label(
            bars, labels=[f"{v:,.2f}" if key == "start_s" else f"{v:,.0f}" for v in meds], fontsize=8
        )
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Sluice and {rival_label}: one worker each, pinned to one core, same emulator, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
