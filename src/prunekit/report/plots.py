"""The report's plots, each returned as the text of an inline <svg> element (matplotlib, Agg, no fonts needed:
glyphs are drawn as paths, so the page looks the same in any browser and fetches nothing)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter  # noqa: E402

from prunekit.report.runs import (  # noqa: E402
    Dense,
    Point,
    Recovery,
    Search,
    layer_sparsity,
    metric_interval,
    metric_name,
    metric_value,
    number,
)

Key = tuple[str, str, str]  # (model, method, pattern): the points joined by one line
COLOURS = plt.get_cmap("tab10").colors
LOG_RANGE = (1e-300, 1e300)  # perplexities plotted on the log axis: its tick arithmetic overflows beyond these
LOSS_LIMIT = 1e100  # losses plotted (a cross-entropy is far below this; the axis arithmetic overflows near 1e308)
MAX_BAR_ROWS = 4  # more per-layer rows than this become a heatmap: grouped bars would be too thin to read
# Labels come from the runs (method, model, task and directory names), so mathtext is off: a `$` in them is drawn as
# a `$`, not parsed as TeX (which garbles the text or raises on a bad formula). No formatter here emits mathtext.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "path",
         "text.parse_math": False, "axes.formatter.use_mathtext": False}


def svg_text(figure: Figure) -> str:
    """The figure as an <svg> element to inline in HTML: no XML prologue or DOCTYPE, no metadata block."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight",
                   metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):].strip()


def key(point: Point) -> Key:
    return point.model, point.method, point.pattern


def series_labels(keys: Sequence[Key]) -> dict[Key, str]:
    """Legend text per series, naming the model or pattern only when the runs have more than one."""
    models, patterns = {k[0] for k in keys}, {k[2] for k in keys}
    out = {}
    for model, method, pattern in keys:
        parts = [method] + ([pattern] if len(patterns) > 1 else []) + ([model] if len(models) > 1 else [])
        out[(model, method, pattern)] = parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")
    return out


def series(points: Sequence[Point]) -> dict[Key, list[Point]]:
    """Plottable points grouped into lines, each sorted by sparsity; failed or sparsity-less points are left out."""
    out: dict[Key, list[Point]] = {}
    for point in points:
        if point.error is None and point.sparsity is not None:
            out.setdefault(key(point), []).append(point)
    return {k: sorted(v, key=lambda p: p.sparsity) for k, v in out.items()}


def colours(keys: Sequence[Key]) -> dict[Key, tuple]:
    return {k: COLOURS[i % len(COLOURS)] for i, k in enumerate(keys)}


def _dense_lines(dense: Sequence[Dense], value: str, several_models: bool) -> list[tuple[float, str]]:
    """(y, label) of each distinct dense baseline; runs that measured the same model the same way share one line."""
    lines: dict[tuple[str, float], str] = {}
    for d in dense:
        y = getattr(d, value)
        if y is not None:
            lines.setdefault((d.model, round(y, 4)), "dense" + (f" ({d.model})" if several_models else ""))
    return [(y, label) for (_, y), label in lines.items()]


def _sparsity_axis(axes: plt.Axes, xs: Sequence[float]) -> None:
    """Percent ticks, and at least 20 points of sparsity shown: one run alone would otherwise get a 48-52% axis."""
    low, high = min(xs), max(xs)
    pad = max(0.05, 0.08 * (high - low), (0.2 - (high - low)) / 2)
    axes.set_xlim(max(0.0, low - pad), min(1.0, high + pad))
    axes.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))  # whole percents only
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("sparsity")


def _log_ticks(axes: plt.Axes, ys: Sequence[float]) -> None:
    """Plain-number ticks on a log axis; perplexities often span less than a decade, and then 1-2-3-5 steps alone
    can leave a single labelled tick, so such a range gets finer steps."""
    subs = (1.0, 2.0, 3.0, 5.0) if max(ys) / min(ys) >= 10 else (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
    locator = LogLocator(base=10, subs=subs)
    axes.yaxis.set_major_locator(locator)
    # Widen the axis to the labelled ticks just outside the data, so every point lies between two labels.
    ticks = locator.tick_values(min(ys) / 10, max(ys) * 10)  # it lists only the decades it is asked for
    axes.set_ylim(max([t for t in ticks if t <= min(ys)] or [min(ys)]) / 1.03,
                  min([t for t in ticks if t >= max(ys)] or [max(ys)]) * 1.03)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())


def _on_log_axis(value: float | None) -> bool:
    return value is not None and LOG_RANGE[0] <= value <= LOG_RANGE[1]


def perplexity_plot(points: Sequence[Point], dense: Sequence[Dense]) -> str | None:
    """Perplexity against sparsity, one line per method (log y); None when no point has a perplexity."""
    lines = {k: [p for p in v if _on_log_axis(p.perplexity)] for k, v in series(points).items()}
    lines = {k: v for k, v in lines.items() if v}
    if not lines:
        return None
    names, colour = series_labels(list(lines)), colours(list(lines))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(7.5, 4.2))
        for k, line in lines.items():
            axes.plot([p.sparsity for p in line], [p.perplexity for p in line], marker="o", color=colour[k],
                      label=names[k])
        baselines = [(y, label) for y, label in _dense_lines(dense, "perplexity", len({k[0] for k in lines}) > 1)
                     if _on_log_axis(y)]
        for y, label in baselines:
            axes.axhline(y, color="0.35", linestyle="--", linewidth=1, label=f"{label}: {y:.4g}")
        axes.set_yscale("log")
        _log_ticks(axes, [p.perplexity for v in lines.values() for p in v] + [y for y, _ in baselines])
        axes.set_ylabel("perplexity (log scale, lower is better)")
        _sparsity_axis(axes, [p.sparsity for v in lines.values() for p in v])
        axes.legend(fontsize=8)
        return svg_text(figure)


YLABELS = {"acc": "accuracy", "acc_norm": "accuracy (acc_norm)", "exact_match": "exact match"}
Panel = tuple[str, str]  # (task, metric): results of another metric of the same task get their own panel


def _panels(points: Sequence[Point], dense: Sequence[Dense]) -> list[Panel]:
    found = [r for p in points if p.error is None for r in p.zeroshot] + [r for d in dense for r in d.zeroshot]
    return list(dict.fromkeys((r["task"], metric_name(r)) for r in found))


def _in_panel(result: dict, panel: Panel) -> bool:
    return result["task"] == panel[0] and metric_name(result) == panel[1] and metric_value(result) is not None


def zeroshot_plot(points: Sequence[Point], dense: Sequence[Dense]) -> str | None:
    """Zero-shot scores against sparsity, one panel per task and metric (each result's own: acc, acc_norm or
    exact_match), 95% intervals as error bars; None without results."""
    panels = _panels(points, dense)
    if not panels:
        return None
    lines = series(points)
    keys = [k for k, v in lines.items() if any(p.zeroshot for p in v)]
    names, colour = series_labels(keys), colours(keys)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    with plt.rc_context(STYLE):
        figure, grid = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.3 * rows + 0.5), squeeze=False)
        for axes in grid.flat[len(panels):]:
            axes.set_visible(False)
        for panel, axes in zip(panels, grid.flat, strict=False):
            _task_panel(axes, panel, [(k, lines[k]) for k in keys], names, colour, dense)
        # One legend for all panels: methods first, then the baselines, each once.
        legend: dict[str, object] = {}
        for axes in grid.flat[:len(panels)]:
            for handle, text in zip(*axes.get_legend_handles_labels(), strict=True):
                legend.setdefault(text, handle)
        texts = sorted(legend, key=lambda t: t in ("dense", "chance"))
        figure.legend([legend[t] for t in texts], texts, loc="lower center", ncol=min(6, len(texts)), fontsize=8,
                      frameon=False)
        figure.tight_layout(rect=(0, 0.1 if rows == 1 else 0.06, 1, 1))
        return svg_text(figure)


def _task_panel(axes: plt.Axes, panel: Panel, lines: list[tuple[Key, list[Point]]], names: dict[Key, str],
                colour: dict[Key, tuple], dense: Sequence[Dense]) -> None:
    chance, examples, named = None, set(), False  # named: some result recorded its metric (older ones did not)
    for index, (k, line) in enumerate(lines):
        found = [(p.sparsity, r) for p in line for r in p.zeroshot if _in_panel(r, panel)]
        if not found:
            continue
        # Nudge each method sideways a little so error bars at the same sparsity do not hide each other.
        shift = (index - (len(lines) - 1) / 2) * 0.004
        xs = [s + shift for s, _ in found]
        ys = [metric_value(r) for _, r in found]
        intervals = [metric_interval(r) for _, r in found]
        errors = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, intervals, strict=True)],
                  [max(0.0, hi - y) for y, (_, hi) in zip(ys, intervals, strict=True)]]
        axes.errorbar(xs, ys, yerr=errors, marker="o", markersize=4, capsize=3, color=colour[k], label=names[k])
        chance = chance or next((float(r["chance"]) for _, r in found if r.get("chance")), None)
        examples |= {r.get("examples") for _, r in found}
        named = named or any(r.get("metric") for _, r in found)
    for d in dense:
        for r in d.zeroshot:
            if _in_panel(r, panel):
                axes.axhline(metric_value(r), color="0.35", linestyle="--", linewidth=1, label="dense")
                chance = chance or (float(r["chance"]) if r.get("chance") else None)
                examples.add(r.get("examples"))
                named = named or bool(r.get("metric"))
    if chance:
        axes.axhline(chance, color="0.55", linestyle=":", linewidth=1.2, label="chance")
    counts = sorted(e for e in examples if isinstance(e, int))
    task, metric = panel
    details = ([metric] if named else []) + ([f"{counts[-1]} examples"] if len(counts) == 1 else [])
    axes.set_title(task + (f" ({', '.join(details)})" if details else ""))
    axes.set_ylabel(YLABELS[metric])
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    _sparsity_axis(axes, [p.sparsity for _, line in lines for p in line] or [0.5])


def layer_rows(points: Sequence[Point]) -> list[tuple[str, dict[int, float]]]:
    """(label, per-layer sparsity) for every point that recorded its matrices, by method then sparsity."""
    with_matrices = [p for p in points if p.error is None and p.matrices]
    with_matrices.sort(key=lambda p: (p.run, p.model, p.method, p.pattern, p.sparsity or 0.0))
    several_runs = len({p.run for p in with_matrices}) > 1
    rows = []
    for p in with_matrices:
        sparsity = f" {p.sparsity:.0%}" if p.sparsity is not None else ""
        rows.append(((f"{p.run}: " if several_runs else "") + f"{p.method}{sparsity}", layer_sparsity(p.matrices)))
    return [(label, layers) for label, layers in rows if layers]


def layer_plot(points: Sequence[Point]) -> str | None:
    """Per-layer sparsity: grouped bars for a few models, a heatmap (rows = models, columns = layers) for more."""
    rows = layer_rows(points)
    if not rows:
        return None
    layers = sorted({i for _, values in rows for i in values})
    with plt.rc_context(STYLE):
        return svg_text(_layer_bars(rows, layers) if len(rows) <= MAX_BAR_ROWS else _layer_heatmap(rows, layers))


def _layer_bars(rows: list[tuple[str, dict[int, float]]], layers: list[int]) -> Figure:
    figure, axes = plt.subplots(figsize=(max(6.0, min(12.0, 0.22 * len(layers) * len(rows) + 3)), 3.6))
    width = 0.8 / len(rows)
    for index, (label, values) in enumerate(rows):
        xs = [i + (index - (len(rows) - 1) / 2) * width for i in values]
        axes.bar(xs, list(values.values()), width=width, color=COLOURS[index % len(COLOURS)], label=label)
    top = max(v for _, values in rows for v in values.values())
    axes.set_ylim(0, min(1.0, top * 1.15 + 0.02))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("zeros (by weight count)")
    axes.set_xticks(layers if len(layers) <= 32 else layers[:: math.ceil(len(layers) / 32)])
    axes.grid(axis="x", visible=False)
    # Above the axes, where it cannot cover a bar.
    axes.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(rows), frameon=False)
    return figure


def _layer_heatmap(rows: list[tuple[str, dict[int, float]]], layers: list[int]) -> Figure:
    column = {layer: i for i, layer in enumerate(layers)}
    values = [[math.nan] * len(layers) for _ in rows]
    for r, (_, found) in enumerate(rows):
        for layer, sparsity in found.items():
            values[r][column[layer]] = sparsity
    figure, axes = plt.subplots(figsize=(max(6.0, min(12.0, 0.28 * len(layers) + 3.5)), 0.8 + 0.28 * len(rows)))
    # pcolormesh (not imshow) keeps the cells as vectors, so the heatmap stays sharp when zoomed.
    mesh = axes.pcolormesh(values, cmap="viridis", vmin=0.0, vmax=1.0, edgecolors="white", linewidth=0.3)
    axes.set_yticks([r + 0.5 for r in range(len(rows))], [label for label, _ in rows])
    shown = range(0, len(layers), max(1, math.ceil(len(layers) / 32)))
    axes.set_xticks([c + 0.5 for c in shown], [str(layers[c]) for c in shown])
    axes.invert_yaxis()
    axes.grid(False)
    axes.set_xlabel("decoder layer")
    colourbar = figure.colorbar(mesh, ax=axes, pad=0.01, fraction=0.04)
    colourbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    colourbar.set_label("zeros")
    return figure


def _losses(value: object) -> list[float]:
    """The recorded losses that are finite numbers of a plottable size (a report may hold anything there)."""
    found = [number(x) for x in value] if isinstance(value, list) else []
    return [x for x in found if x is not None and abs(x) <= LOSS_LIMIT]


def loss_plot(recoveries: Sequence[Recovery]) -> str | None:
    """Training loss per step of each recovery run; None when no run recorded at least two losses."""
    curves = [(r.run, _losses(r.config.get("losses"))) for r in recoveries]
    curves = [(label, losses) for label, losses in curves if len(losses) >= 2]
    if not curves:
        return None
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(7.5, 3.4))
        for index, (label, losses) in enumerate(curves):
            axes.plot(range(1, len(losses) + 1), losses, color=COLOURS[index % len(COLOURS)], linewidth=1,
                      label=label)
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.legend(fontsize=8)
        return svg_text(figure)


COST_LABELS = {"params": "fraction of the parameters kept", "memory": "fraction of the weight bytes kept",
               "decode": "decoding speed-up (measured)",
               "prefill": "prefill speed-up (measured)"}


def _quality_of(search: Search, baseline: bool, by_perplexity: bool) -> float | None:
    if by_perplexity:
        return search.baseline_perplexity if baseline else search.perplexity
    return search.baseline_kl if baseline else search.kl


def search_plot(searches: Sequence[Search]) -> str | None:
    """Per cost kind: quality (perplexity, else KL) against cost of each search's chosen model (stars, joined
    across runs: the front) and of its baseline at the same cost (circles); then the best fitness per generation of
    each run, its baseline dashed. None when nothing is plottable."""
    kinds = [k for k in COST_LABELS if any(s.target_key == k and s.cost is not None for s in searches)]
    runs = [s for s in searches if len(s.history) >= 1]
    if not kinds and not runs:
        return None
    with plt.rc_context(STYLE):
        figure, grid = plt.subplots(1, len(kinds) + bool(runs), figsize=(4.2 * (len(kinds) + bool(runs)), 3.4),
                                    squeeze=False)
        panels = list(grid[0])
        for axes, kind in zip(panels, kinds, strict=False):
            chosen = [s for s in searches if s.target_key == kind and s.cost is not None]
            by_perplexity = all(_on_log_axis(s.perplexity) and _on_log_axis(s.baseline_perplexity) for s in chosen)
            plotted: list[float] = []
            for baseline, marker, label in ((True, "o", "baseline, same cost"), (False, "*", "searched")):
                xs = [s.baseline_cost if baseline else s.cost for s in chosen]
                ys = [_quality_of(s, baseline, by_perplexity) for s in chosen]
                pairs = sorted((x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None)
                if pairs:
                    axes.plot(*zip(*pairs, strict=True), marker=marker, markersize=9 if marker == "*" else 5,
                              linewidth=1, color=COLOURS[0 if baseline else 1], label=label)
                    plotted.extend(y for _, y in pairs)
            if by_perplexity and plotted:
                axes.set_yscale("log")
                _log_ticks(axes, plotted)
            axes.set_xlabel(COST_LABELS[kind])
            axes.set_ylabel("perplexity" if by_perplexity else "KL from the dense model per token")
            axes.legend(fontsize=8)
        if runs:
            axes = panels[-1]
            for index, search in enumerate(runs):
                colour = COLOURS[index % len(COLOURS)]
                axes.plot(range(1, len(search.history) + 1), search.history, color=colour, linewidth=1,
                          label=f"{search.run} ({search.target})")
                if search.start_fitness is not None:
                    axes.axhline(search.start_fitness, color=colour, linestyle="--", linewidth=0.8)
            axes.set_xlabel("generation")
            axes.set_ylabel("best KL per token (search windows)")
            axes.legend(fontsize=8)
        return svg_text(figure)
