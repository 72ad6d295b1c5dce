"""Render a privacy audit report (``gramfed.privacy.report.Report``) as JSON, Markdown or HTML.

The HTML page is self-contained (inline CSS, plots embedded as base64 PNG) so it can be mailed
or archived as one file, and is written for a privacy officer rather than a programmer: plain
headings, a short explanation of epsilon and delta, the integrity check first, warnings next.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any, Literal

from gramfed.privacy.report import (
    EmpiricalTestRow,
    PoolReport,
    PostprocessRow,
    RefusalRow,
    ReleaseRow,
    Report,
)

Format = Literal["html", "json", "markdown"]
FORMATS: tuple[Format, ...] = ("html", "json", "markdown")

_KIND_LABELS = {
    "release": "noisy release",
    "failed": "failed (charged)",
    "non_dp": "EXACT, not private",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1.5rem; color: #1d2430; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #d6dbe3; padding-bottom: .2rem;
     margin-top: 2.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
.meta { color: #5a6474; font-size: .9rem; }
.banner { padding: .8rem 1rem; border-radius: 6px; font-weight: 600; margin: 1.2rem 0; }
.ok { background: #e5f5e8; color: #17602a; border: 1px solid #9fd3aa; }
.bad { background: #fde8e8; color: #8a1616; border: 1px solid #ef9a9a; }
.unknown { background: #f1f3f6; color: #4a5260; border: 1px solid #cfd5de; }
.explain { background: #f5f8fc; border-left: 4px solid #6b8fc7; padding: .6rem 1rem; }
.warnings li { margin: .3rem 0; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d6dbe3; padding: .35rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #eef1f5; }
table.summary th { width: 16rem; }
tr.unverified td { background: #fff3f3; }
.tag-bad { color: #8a1616; font-weight: 600; }
.params { font-family: ui-monospace, monospace; font-size: .8rem; }
img.plot { max-width: 100%; border: 1px solid #d6dbe3; border-radius: 4px; }
.bar { background: #e3e7ee; border-radius: 4px; height: .7rem; width: 12rem;
       display: inline-block; vertical-align: middle; margin-right: .5rem; }
.bar span { display: block; height: 100%; border-radius: 4px; background: #4c7bd0; }
.bar span.high { background: #d0584c; }
"""


# --------------------------------------------------------------------------- numbers


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "unbounded (not private)"
    return f"{x:.{digits}g}"


def _cost(row: ReleaseRow) -> str:
    if row.kind == "non_dp":
        return "no protection"
    delta = "0" if row.delta == 0 else f"{row.delta:g}"
    return f"ε = {_num(row.epsilon)}, δ = {delta}"


def _params(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items() if v is not None)


def _when(time: str) -> str:
    """An entry's ISO time to the second, as people write it ("2026-01-31 14:05:09")."""
    return time[:19].replace("T", " ")


def _integrity(verified: bool) -> str:
    return "verified" if verified else "NOT verified"


# --------------------------------------------------------------------------- JSON


def render_json(report: Report) -> str:
    """The report's machine-readable form (``Report.to_json``), indented."""
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


# --------------------------------------------------------------------------- plots


def spend_plot_png(pool: PoolReport) -> bytes:
    """A step plot of the pool's cumulative epsilon against its budget, as PNG bytes."""
    # Imported here: matplotlib costs a second to load and only the HTML report needs it. The
    # object-oriented API leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.5, 3.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = len(pool.timeline)
    # The total after release i holds from x = i on; one extra step shows the last total.
    steps = list(range(n + 2))
    spent = [0.0] + [p.epsilon for p in pool.timeline]
    spent.append(spent[-1])
    ax.step(steps, spent, where="post", color="#4c7bd0", linewidth=2, label="privacy spent (ε)")
    ax.axhline(
        pool.budget_epsilon,
        color="#d0584c",
        linestyle="--",
        linewidth=1.5,
        label=f"budget (ε = {pool.budget_epsilon:.3g})",
    )
    ax.set_ylim(0, max(pool.budget_epsilon, max(spent)) * 1.15)
    ax.set_xlim(0, n + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of charged releases, in time order")
    ax.set_ylabel(f"ε at δ = {pool.delta:g}")
    ax.set_title(f"Privacy spent over time: {pool.key}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[tuple[list[str], bool]], css: str = "") -> str:
    """An HTML table; each row is (already escaped cells, verified)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        ("<tr>" if ok else '<tr class="unverified">')
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
        for cells, ok in rows
    )
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _share_bar(share: float) -> str:
    width = min(100.0, max(0.0, 100 * share))
    high = ' class="high"' if share > 0.8 else ""
    return f'<span class="bar"><span{high} style="width:{width:.1f}%"></span></span>{share:.0%}'


def _pool_html(pool: PoolReport) -> str:
    recipients = ", ".join(pool.trusted_recipients) or "none"
    summary = [
        ("Dataset", _e(pool.dataset)),
        ("Who is protected", f"one <b>{_e(pool.unit)}</b> ({_e(pool.unit_description)})"),
        ("Neighbouring datasets", f"{_e(pool.neighbouring)}: {_e(pool.neighbouring_description)}"),
        (
            "Budget",
            f"ε = {_num(pool.budget_epsilon)} at δ = {pool.delta:g} (ρ = {_num(pool.budget_rho)})",
        ),
        (
            "Spent so far",
            f"ε = {_num(pool.epsilon_reported)} (ρ = {_num(pool.spent_rho)});"
            f" {_share_bar(pool.share_spent)} of the budget (in ρ)",
        ),
        (
            "Spent, if the releases were planned in advance",
            f"ε = {_num(pool.epsilon_fixed_plan)}",
        ),
        ("Remaining", f"ρ = {_num(pool.remaining_rho)}"),
        ("Releases / refused requests", f"{pool.releases} / {pool.refusals}"),
        ("Exact (non-private) releases allowed to", _e(recipients)),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)
    plot = base64.b64encode(spend_plot_png(pool)).decode("ascii")
    notes = "".join(f"<li>{_e(w)}</li>" for w in pool.warnings)
    return (
        f"<h3>Budget pool {_e(pool.key)}</h3>"
        f'<table class="summary"><tbody>{rows}</tbody></table>'
        f'<img class="plot" alt="Privacy spent over time for pool {_e(pool.key)}"'
        f' src="data:image/png;base64,{plot}">'
        + (f'<ul class="warnings">{notes}</ul>' if notes else "")
    )


_RELEASE_HEADERS = [
    "#",
    "Time (UTC)",
    "Pool",
    "Requested by",
    "Purpose",
    "Kind",
    "Method",
    "Parameters",
    "Cost ρ",
    "Cost (ε, δ)",
    "Integrity",
]
_REFUSAL_HEADERS = [
    "#",
    "Time (UTC)",
    "Pool",
    "Requested by",
    "Purpose",
    "Method",
    "Reason",
    "Asked ρ",
    "Left ρ",
    "Integrity",
]
_DERIVED_HEADERS = [
    "#",
    "Time (UTC)",
    "Requested by",
    "Purpose",
    "Function",
    "Computed from entries",
    "Pools",
    "Private",
    "Integrity",
]


def _release_cells(r: ReleaseRow) -> list[str]:
    return [
        str(r.seq),
        _when(r.time),
        r.pool,
        r.requester,
        r.description,
        _KIND_LABELS.get(r.kind, r.kind),
        r.mechanism + (f" to {r.recipient}" if r.recipient else ""),
        _params(r.parameters),
        _num(r.rho),
        _cost(r),
        _integrity(r.verified),
    ]


def _release_styles(r: ReleaseRow) -> dict[int, str]:
    return {7: "params"} | ({} if r.kind == "release" else {5: "tag-bad"})


def _refusal_cells(r: RefusalRow) -> list[str]:
    return [
        str(r.seq),
        _when(r.time),
        r.pool,
        r.requester,
        r.description,
        r.mechanism,
        r.reason,
        _num(r.requested_rho),
        _num(r.remaining_rho),
        _integrity(r.verified),
    ]


def _postprocess_cells(p: PostprocessRow) -> list[str]:
    return [
        str(p.seq),
        _when(p.time),
        p.requester,
        p.description,
        p.function,
        ", ".join(f"#{n}" for n in p.parents),
        ", ".join(p.pools),
        "yes" if p.dp else "no (uses exact values)",
        _integrity(p.verified),
    ]


def _html_cells(cells: list[str], styles: dict[int, str] | None = None) -> list[str]:
    """Escaped cells, the ones named in ``styles`` wrapped in a span of that CSS class."""
    out = [_e(c) for c in cells]
    for column, css in (styles or {}).items():
        out[column] = f'<span class="{css}">{out[column]}</span>'
    return out


_EMPIRICAL_HEADERS = [
    "Time (UTC)",
    "Mechanism",
    "Claimed ε (δ)",
    "Measured ε at least",
    "Confidence",
    "Samples per input",
    "Verdict",
]


def _empirical_cells(t: EmpiricalTestRow) -> list[str]:
    return [
        _when(t.time),
        t.mechanism,
        f"{_num(t.claimed_epsilon)} ({t.delta:g})",
        _num(t.epsilon_lower_bound),
        f"{t.confidence:.0%}",
        f"{t.samples:,}",
        "PASS" if t.verdict == "pass" else "FAIL: more privacy loss than claimed",
    ]


_EMPIRICAL_EXPLANATION = (
    "Statistical tests of the noise mechanisms: many releases on two neighbouring inputs, and"
    " a lower bound, at the stated confidence, on the privacy loss an attacker can show. A"
    " bound above the claimed ε means the mechanism is broken; a pass fails to refute the"
    " claim but does not prove it."
)


def render_html(report: Report) -> str:
    """A self-contained HTML page (inline CSS and images)."""
    v = report.verification
    state = "unknown" if not v.checked else ("ok" if v.ok else "bad")
    key = f" (public key {_e(v.key_fingerprint)})" if v.checked else ""
    warnings = "".join(f"<li>{_e(w)}</li>" for w in report.warnings) or "<li>None.</li>"
    pools = "".join(_pool_html(p) for p in report.pools) or "<p>The ledger has no pools.</p>"
    releases = _table(
        _RELEASE_HEADERS,
        [(_html_cells(_release_cells(r), _release_styles(r)), r.verified) for r in report.releases],
    )
    refusals = _table(
        _REFUSAL_HEADERS,
        [(_html_cells(_refusal_cells(r)), r.verified) for r in report.refusals],
    )
    derived = _table(
        _DERIVED_HEADERS,
        [
            (_html_cells(_postprocess_cells(p), {} if p.dp else {7: "tag-bad"}), p.verified)
            for p in report.postprocessing
        ],
    )
    # Attached tests are not part of the signed chain, so no row is marked verified.
    empirical = _table(
        _EMPIRICAL_HEADERS,
        [(_html_cells(_empirical_cells(t)), True) for t in report.empirical_tests],
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Privacy audit report: {_e(report.ledger)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Privacy audit report</h1>
<p class="meta">Ledger {_e(report.ledger)} (id {_e(report.ledger_uuid)}), {report.entries}
entries. Report generated {_e(report.generated)}.</p>
<div id="integrity" class="banner {state}">Integrity check: {_e(v.summary)}{key}</div>
<h2>What the numbers mean</h2>
<p class="explain">{_e(report.explanation)}</p>
<h2>Things to look at</h2>
<ul class="warnings" id="warnings">{warnings}</ul>
<h2>Budgets</h2>
{pools}
<h2>Releases ({len(report.releases)})</h2>
<p>Every statistic that left the system, who asked for it, how it was protected and what it
cost. Rows marked NOT verified come after a failed integrity check and may be altered.</p>
{releases if report.releases else "<p>No releases.</p>"}
<h2>Refused requests ({len(report.refusals)})</h2>
<p>Requests the privacy gate turned down. Nothing was computed, released or spent for them.</p>
{refusals if report.refusals else "<p>No refused requests.</p>"}
<h2>Derived statistics ({len(report.postprocessing)})</h2>
<p>Figures computed only from earlier releases. They cost no privacy budget, and each names
the releases it came from.</p>
{derived if report.postprocessing else "<p>No derived statistics.</p>"}
<h2>Empirical mechanism tests ({len(report.empirical_tests)})</h2>
<p>{_e(_EMPIRICAL_EXPLANATION)} These results are kept beside the ledger, not in its signed
chain.</p>
{empirical if report.empirical_tests else "<p>No tests attached.</p>"}
</body>
</html>
"""


# --------------------------------------------------------------------------- Markdown


def _md(value: Any) -> str:
    # "<" would start raw HTML in most Markdown renderers (e.g. a function named <lambda>).
    return str(value).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """The report as Markdown (tables; no plots)."""
    v = report.verification
    out = [
        "# Privacy audit report",
        "",
        f"Ledger `{report.ledger}` (id {report.ledger_uuid}), {report.entries} entries."
        f" Generated {report.generated}.",
        "",
        f"**Integrity check: {v.summary}**"
        + (f" (public key {v.key_fingerprint})" if v.checked else ""),
        "",
        "## What the numbers mean",
        "",
        report.explanation,
        "",
        "## Things to look at",
        "",
        *([f"- {w}" for w in report.warnings] or ["- None."]),
        "",
        "## Budgets",
    ]
    for p in report.pools:
        out += [
            "",
            f"### Budget pool {p.key}",
            "",
            _md_table(
                ["", ""],
                [
                    ["Dataset", p.dataset],
                    ["Who is protected", f"one {p.unit} ({p.unit_description})"],
                    ["Neighbouring datasets", f"{p.neighbouring}: {p.neighbouring_description}"],
                    [
                        "Budget",
                        f"ε = {_num(p.budget_epsilon)} at δ = {p.delta:g}"
                        f" (ρ = {_num(p.budget_rho)})",
                    ],
                    [
                        "Spent so far",
                        f"ε = {_num(p.epsilon_reported)} (ρ = {_num(p.spent_rho)});"
                        f" {p.share_spent:.0%} of the budget",
                    ],
                    ["Spent, if planned in advance", f"ε = {_num(p.epsilon_fixed_plan)}"],
                    ["Remaining", f"ρ = {_num(p.remaining_rho)}"],
                    ["Releases / refused requests", f"{p.releases} / {p.refusals}"],
                    ["Exact releases allowed to", ", ".join(p.trusted_recipients) or "none"],
                ],
            ),
        ]
        if p.warnings:
            out += ["", *(f"- {w}" for w in p.warnings)]
    out += ["", f"## Releases ({len(report.releases)})", ""]
    out.append(
        _md_table(_RELEASE_HEADERS, [_release_cells(r) for r in report.releases])
        if report.releases
        else "No releases."
    )
    out += ["", f"## Refused requests ({len(report.refusals)})", ""]
    out.append(
        _md_table(_REFUSAL_HEADERS, [_refusal_cells(r) for r in report.refusals])
        if report.refusals
        else "No refused requests."
    )
    out += ["", f"## Derived statistics ({len(report.postprocessing)})", ""]
    out.append(
        _md_table(_DERIVED_HEADERS, [_postprocess_cells(p) for p in report.postprocessing])
        if report.postprocessing
        else "No derived statistics."
    )
    out += ["", f"## Empirical mechanism tests ({len(report.empirical_tests)})", ""]
    out += [_EMPIRICAL_EXPLANATION, ""]
    out.append(
        _md_table(_EMPIRICAL_HEADERS, [_empirical_cells(t) for t in report.empirical_tests])
        if report.empirical_tests
        else "No tests attached."
    )
    return "\n".join(out) + "\n"


def render(report: Report, fmt: Format | str) -> str:
    """The report in one of ``FORMATS``."""
    if fmt == "json":
        return render_json(report)
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
