"""A smoke run as one self-contained HTML page (no script, no external asset): a summary, the results
table (a deployment per row, a check per column, each cell its verdict and measurement), what each
deployment burned, and the drift from the previous run. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from sluice.smoke.report import CHAT_CHECKS, EMBED_CHECKS, Drift, RunReport, usd

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24}
h1{font-size:1.4rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.summary{color:#57606a;margin-bottom:1rem}.verdict{font-weight:600;padding:.1rem .5rem;border-radius:4px}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #d0d7de;padding:.35rem .5rem;
vertical-align:top;text-align:left}th{background:#f6f8fa;font-weight:600}
td small,th small{display:block;color:#57606a;font-size:12px;font-weight:400}
.pass{background:#dafbe1}.warn{background:#fff8c5}.fail{background:#ffebe9}.skip{background:#f6f8fa;color:#57606a}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""
_ORDER = tuple(dict.fromkeys((*CHAT_CHECKS, *EMBED_CHECKS)))


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(run: RunReport, drift: Sequence[Drift] = ()) -> str:
    """The page."""
    verdict = "pass" if run.ok else "fail"
    rows = []
    for dep in run.deployments:
        cells = []
        for name in _ORDER:
            check = dep.check(name)
            if check is None:
                cells.append("<td></td>")
                continue
            cells.append(
                f'<td class="{escape(check.status)}" data-check="{escape(name)}">'
                f"{escape(check.status)}<small>{escape(check.detail)}</small></td>"
            )
        rows.append(
            f'<tr><th scope="row">{escape(dep.id)}'
            f"<small>{escape(dep.alias)} · {escape(dep.preset)}</small></th>"
            f'<td class="{escape(dep.status)}">{escape(dep.status)}</td>{"".join(cells)}'
            f'<td class="num">{dep.input_tokens:,}</td><td class="num">{dep.output_tokens:,}</td>'
            f'<td class="num">${escape(usd(dep.cost_nanos))}</td></tr>'
        )
    head = "".join(f"<th>{escape(n)}</th>" for n in _ORDER)
    drift_rows = "".join(
        f"<tr><td>{escape(d.deployment)}</td><td>{escape(d.check)}</td><td>{escape(d.kind)}</td>"
        f"<td>{escape(d.detail)}</td></tr>"
        for d in drift
    )
    drift_html = (
        '<h2>Drift from the previous run</h2><table id="drift"><thead><tr><th>deployment</th><th>check</th>'
        f"<th>change</th><th>detail</th></tr></thead><tbody>{drift_rows}</tbody></table>"
        if drift
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Sluice smoke run {escape(run.id)}</title><style>{_CSS}</style></head><body>"
        f'<h1>Sluice smoke run <span class="verdict {verdict}">{verdict}</span></h1>'
        f'<p class="summary">{escape(run.id)} · {_when(run.started_us)} · '
        f"{len(run.deployments)} deployments · "
        f"spent ${escape(usd(run.cost_nanos))} of a ${escape(usd(run.cap_nanos))} cap"
        f"{' · light (canary)' if run.light else ''}</p>"
        '<h2>Results</h2><table id="results"><thead><tr><th>deployment</th><th>verdict</th>'
        f"{head}<th>tokens in</th><th>tokens out</th><th>cost</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{drift_html}</body></html>\n"
    )
