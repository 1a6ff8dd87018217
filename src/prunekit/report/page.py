"""Assembling the HTML page: one self-contained document (inline CSS and SVG, no scripts, nothing fetched).

Every string that came from a JSON file goes through `escape`; only the SVG text matplotlib wrote is inlined raw."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import yaml

from prunekit.report import plots, tables
from prunekit.report.runs import Dense, Point, Recovery, Run, number

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.meta, figcaption, .note { color: #59636e; font-size: .9em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.dense td { background: #f6f8fa; font-style: italic; }
tr.mean td { font-weight: 600; border-top: 2px solid #8c959f; } span.ci { color: #59636e; font-size: .85em; }
figure.plot { margin: 1.2em 0; } figure.plot svg { display: block; max-width: 100%; height: auto; }
details { margin: .4em 0; } summary { cursor: pointer; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
code { font-size: .9em; }
"""
DASH = "\u2013"


# --- formatting: None (not measured) is a dash everywhere --------------------------------------------------------

# The recovery section's numbers come straight from JSON, so anything that is not a number also shows as a dash.

def integer(value: Any) -> str:
    return DASH if number(value) is None else f"{int(value):,}"


def percent(value: Any, digits: int = 1) -> str:
    return DASH if number(value) is None else f"{value:.{digits}%}"


def decimal(value: Any, digits: int = 2) -> str:
    return DASH if number(value) is None else f"{value:,.{digits}f}"


def seconds(value: Any) -> str:
    return DASH if number(value) is None else f"{value:,.1f} s"


def size(value: int | None) -> str:
    if value is None:
        return DASH
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def nonzero(parameters: int | None, zeros: int | None) -> int | None:
    return None if parameters is None or zeros is None else parameters - zeros


def density(parameters: int | None, zeros: int | None) -> float | None:
    return None if not parameters or zeros is None else (parameters - zeros) / parameters


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int], classes: Sequence[str] = ()
          ) -> str:
    """An HTML table of already escaped cells; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{classes[index]}"' if index < len(classes) and classes[index] else ""
        cells = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(figure_id: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" id="{figure_id}">{svg}<figcaption>{caption}</figcaption></figure>'


# --- sections -------------------------------------------------------------------------------------------------------

def _summary(run: Run) -> str:
    if run.kind == "sweep":
        ok = [p for p in run.points if p.error is None]
        methods = len({p.method for p in run.points})
        sparsities = len({p.sparsity for p in run.points})
        failed = len(run.points) - len(ok)
        return (f"sweep: {methods} methods x {sparsities} sparsities, {len(ok)} points"
                + (f", {failed} failed" if failed else ""))
    if run.kind == "recovery":
        config = run.recovery.config if run.recovery else {}
        steps = config.get("steps")
        return f"recovery: {config.get('method') or '?'}, {'?' if steps is None else steps} steps"
    point = run.points[0]
    return f"prune: {point.method} ({point.pattern}), sparsity {percent(point.sparsity, 0)}"


def _runs_table(runs: Sequence[Run]) -> str:
    rows = [[escape(r.label), escape(_summary(r)), escape(r.model), escape(r.protocol or DASH), seconds(r.seconds),
             escape(str(r.version or DASH)), f"<code>{escape(str(r.path))}</code>"] for r in runs]
    return table(["run", "what", "model", "perplexity measured on", "wall time", "written by prunekit", "path"],
                 rows, {4})


def _quality(points: Sequence[Point], dense: Sequence[Dense], runs: Sequence[Run]) -> str:
    if not points:
        return ""  # recovery runs only: their before/after numbers are in the recovery table
    out = ["<h2>Quality against sparsity</h2>"]
    protocols = sorted({r.protocol for r in runs if r.protocol and r.kind != "recovery"})
    measured = (f"Perplexity on {escape('; '.join(protocols))}." if len(protocols) == 1 else
                f"Careful: the runs measured perplexity differently ({escape('; '.join(protocols))}), so their "
                "numbers are not directly comparable." if protocols else "")
    svg = plots.perplexity_plot(points, dense)
    if svg:
        out.append(figure("perplexity", svg, f"Perplexity against sparsity, one line per method; dashed: the dense "
                                             f"model. {measured}"))
    else:
        out.append('<p class="note">No perplexity results in these runs.</p>')
    svg = plots.zeroshot_plot(points, dense)
    if svg:
        out.append(figure("zeroshot", svg, "Zero-shot scores against sparsity, one panel per task and metric (the one "
                                           "a paper reports for the task); error bars: 95% intervals; dashed: the "
                                           "dense model; dotted: chance."))
    else:
        out.append('<p class="note">No zero-shot results in these runs.</p>')
    out.append(_paper_table(tables.paper_table(points, dense)))
    return "".join(out)


def _score(cell: tables.Cell | None) -> str:
    """A table cell: the value in percent, then its 95% interval."""
    if cell is None:
        return DASH
    interval = "" if cell.stderr is None and cell.low == cell.high else \
        f'<span class="ci"> [{100 * cell.low:.1f}, {100 * cell.high:.1f}]</span>'
    return f"{100 * cell.value:.1f}{interval}"


def _mean_note(row: tables.Row, kind: str) -> str:
    names = escape(", ".join(tables.title(t) for t in row.tasks))
    note = f"{escape(row.label.capitalize())}: over the {len(row.tasks)} {kind} tasks every column has ({names})"
    if row.left_out:
        note += f"; left out, as some column lacks them: {escape(', '.join(tables.title(t) for t in row.left_out))}"
    return note + "."


def _paper_table(table_: tables.PaperTable | None) -> str:
    """The zero-shot results as the papers print them: tasks by models, then the means."""
    if table_ is None:
        return ""
    rows = [[escape(row.text), *(_score(c) for c in row.cells)] for row in table_.rows]
    classes = ["" if row.task is not None else "mean" for row in table_.rows]
    notes = [_mean_note(row, "generation" if row.metric == tables.GENERATION else "multiple-choice")
             for row in table_.rows if row.task is None]
    return "".join([
        "<h3>Zero-shot tasks</h3>",
        table(["task (metric)", *(escape(c) for c in table_.columns)], rows, set(range(1, len(table_.columns) + 1)),
              classes),
        '<p class="note">Each task\'s metric in percent, the one a paper reports for it (acc: accuracy; acc_norm: '
        "accuracy with each choice's log-likelihood divided by its length in characters; exact_match: generated "
        "answers that match a reference), with its 95% interval in brackets (as recorded, else &plusmn;1.96 "
        "standard errors)."
        + "".join(f" {note}" for note in notes)
        + (" A mean's interval treats its tasks as independent: standard error &radic;(&Sigma; se&sup2;) / k."
           if notes else "") + "</p>",
    ])


def _layers(points: Sequence[Point]) -> str:
    svg = plots.layer_plot(points)
    if not svg:
        return ""
    return "<h2>Sparsity per layer</h2>" + figure(
        "layer-sparsity", svg, "Fraction of zero weights in each decoder layer's pruned matrices, weighted by matrix "
                               "size (sum of zeros over sum of weights).")


def _size_rows(run: Run) -> tuple[list[list[str]], list[str]]:
    dense = next((d for d in run.dense if d.perplexity is not None or d.parameters is not None), None)
    rows, classes = [], []
    if dense is not None:
        rows.append([escape(run.label), "dense", DASH, percent(0.0, 0), integer(dense.parameters),
                     integer(nonzero(dense.parameters, dense.zero_parameters)),
                     percent(density(dense.parameters, dense.zero_parameters)), DASH, DASH,
                     decimal(dense.perplexity), DASH])
        classes.append("dense")
    order = {m: i for i, m in enumerate(dict.fromkeys(p.method for p in run.points))}
    for p in sorted((p for p in run.points if p.error is None), key=lambda p: (order[p.method], p.sparsity or 0)):
        ratio = p.perplexity / dense.perplexity if dense and dense.perplexity and p.perplexity else None
        rows.append([escape(run.label), escape(p.method), escape(p.pattern), percent(p.sparsity, 0),
                     integer(p.parameters), integer(nonzero(p.parameters, p.zero_parameters)),
                     percent(density(p.parameters, p.zero_parameters)), seconds(p.prune_seconds),
                     size(p.peak_rss_bytes), decimal(p.perplexity), DASH if ratio is None else f"&times;{ratio:.2f}"])
        classes.append("")
    return rows, classes


def _size(runs: Sequence[Run]) -> str:
    rows, classes = [], []
    for run in runs:
        if run.kind != "recovery":
            more, css = _size_rows(run)
            rows += more
            classes += css
    if not rows:
        return ""
    header = ["run", "method", "pattern", "sparsity", "parameters", "nonzero", "density", "prune time", "peak RSS",
              "perplexity", "vs dense"]
    out = ["<h2>Size, time and memory</h2>", table(header, rows, set(range(3, 11)), classes),
           '<p class="note">Density: nonzero parameters over all parameters (embeddings and norms included). '
           "Peak RSS: the pruning process's peak resident memory.</p>"]
    failed = [(r, p) for r in runs for p in r.points if p.error is not None]
    if failed:
        out += ["<h3>Failed points</h3>", table(
            ["run", "method", "pattern", "sparsity", "error"],
            [[escape(r.label), escape(p.method), escape(p.pattern), percent(p.sparsity, 0), escape(p.error or "")]
             for r, p in failed], {3})]
    return "".join(out)


def _recovery_row(r: Recovery) -> list[str]:
    c, ppl = r.config, r.perplexity

    def measured(name: str) -> str:
        value = ppl.get(name)
        return decimal(value.get("perplexity")) if isinstance(value, dict) else DASH

    first, last = c.get("loss_first_10"), c.get("loss_last_10")
    before, after = c.get("masked_zeros_before"), c.get("masked_zeros_after")
    known = number(before) is not None and number(after) is not None
    kept = DASH if not known else "all" if before == after else f"{integer(after)} of {integer(before)}"
    return [escape(r.run), escape(r.model), escape(str(r.teacher or DASH)), escape(str(c.get("method") or DASH)),
            integer(c.get("steps")), seconds(c.get("seconds")), measured("before"), measured("after"),
            measured("teacher"), f"{decimal(first, 3)} &rarr; {decimal(last, 3)}", _sparsity_change(r), kept]


def _sparsity_change(r: Recovery) -> str:
    sparsity = r.decoder_linear_sparsity or {}
    before, after = number(sparsity.get("before")), number(sparsity.get("after"))
    return DASH if before is None or after is None else f"{before:.2%} &rarr; {after:.2%}"


def _recovery(runs: Sequence[Run]) -> str:
    recoveries = [r.recovery for r in runs if r.recovery is not None]
    if not recoveries:
        return ""
    header = ["run", "model", "teacher", "method", "steps", "time", "perplexity before", "after", "teacher",
              "loss first 10 &rarr; last 10", "decoder sparsity", "zeros kept"]
    out = ["<h2>Recovery</h2>", table(header, [_recovery_row(r) for r in recoveries], set(range(4, 12)))]
    svg = plots.loss_plot(recoveries)
    if svg:
        out.append(figure("recovery-loss", svg, "Recovery fine-tuning: training loss at each step."))
    return "".join(out)


def _search(runs: Sequence[Run]) -> str:
    searches = [r.search for r in runs if r.search is not None]
    if not searches:
        return ""
    header = ["run", "model", "target", "space", "baseline (same cost)", "cost", "KL baseline &rarr; searched",
              "perplexity dense / baseline / searched", "candidates", "time"]
    rows = [[escape(s.run), escape(s.model), escape(s.target), escape(s.space), escape(s.baseline),
             f"{decimal(s.cost, 3)} / {decimal(s.baseline_cost, 3)}", f"{decimal(s.baseline_kl, 4)} &rarr; "
             f"{decimal(s.kl, 4)}", f"{decimal(s.dense_perplexity)} / {decimal(s.baseline_perplexity)} / "
             f"{decimal(s.perplexity)}", integer(s.evaluated), seconds(s.seconds)] for s in searches]
    out = ["<h2>Budget search</h2>", table(header, rows, set(range(5, 10))),
           '<p class="note">Cost: searched / baseline (the fraction of the parameters kept, or the measured '
           "speed-up).</p>"]
    svg = plots.search_plot(searches)
    if svg:
        out.append(figure("search", svg, "Each search's chosen model (stars; across runs, the front) and its "
                                         "baseline at the same cost (circles), perplexity on the held-out text "
                                         "(else KL from the dense model) against the cost: the fraction of the "
                                         "parameters kept, or the measured speed-up. Last panel: the best KL per "
                                         "generation of each search, its baseline dashed."))
    return "".join(out)


def _recipe_block(summary: str, text: str | None) -> str:
    body = escape(text) if text else "(no recipe recorded)"
    return f"<details><summary>{escape(summary)}</summary><pre>{body}</pre></details>"


def _recipes(runs: Sequence[Run]) -> str:
    blocks = []
    for run in runs:
        if run.recovery is not None:
            config = {k: v for k, v in run.recovery.config.items() if k != "losses"}
            blocks.append(_recipe_block(f"{run.label}: recovery settings",
                                        yaml.safe_dump(config, sort_keys=False) if config else None))
        for p in run.points:
            if p.error is None:
                name = run.label if run.kind == "prune" else f"{run.label}: {p.method} {percent(p.sparsity, 0)}"
                blocks.append(_recipe_block(name, p.recipe_text))
    return "<h2>Recipes</h2>" + "".join(blocks) if blocks else ""


def _notes(runs: Sequence[Run]) -> str:
    notes = [f"<li>{escape(r.label)}: {escape(n)}</li>" for r in runs for n in r.notes]
    return f"<h2>Notes</h2><ul>{''.join(notes)}</ul>" if notes else ""


def render(runs: Sequence[Run], title: str, generated: str, version: str) -> str:
    """The whole page as a string (pure: the caller supplies the time and version it wants shown)."""
    points = [p for r in runs for p in r.points]
    dense = [d for r in runs for d in r.dense]
    body = "".join([
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Generated {escape(generated)} by prunekit {escape(version)} from {len(runs)} '
        f"run{'s' if len(runs) != 1 else ''}.</p>",
        _runs_table(runs), _quality(points, dense, runs), _search(runs), _layers(points), _size(runs),
        _recovery(runs),
        _recipes(runs), _notes(runs),
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
