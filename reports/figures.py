"""Plotly figures of a run. Every string that came from the run is HTML-escaped before it reaches a
figure: plotly renders legend names, tick labels and hover texts as a subset of HTML."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from cellsparse.objective_info import objective_info
from cellsparse.pareto import pareto_mask
from cellsparse.rundir import ATTR_NODE, INPUT_COLUMN, RunRecord, config_columns, eligible_mask

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
MAX_HOVER_CONFIG = 16


def esc(value: Any) -> str:
    """Any run-supplied value as escaped text."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for people: 4 significant digits, k/M/G suffixes for big counts; other values as text."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "" if math.isnan(v) else str(v)
        for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
            if abs(v) >= scale:
                return f"{v / scale:.3g}{suffix}" if suffix != "k" else f"{v / 1e3:.4g}k"
        if v == int(v):
            return str(int(v))
        return f"{v:.4g}"
    return str(value)


def label(name: str) -> str:
    return esc(objective_info(name).label)


def strategy_colours(strategies: Iterable[str]) -> dict[str, str]:
    """One stable colour per strategy (sorted names), shared by every figure."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(set(strategies)))}


def hover_text(row: pd.Series, objectives: Sequence[str], configs: Sequence[str]) -> str:
    """Escaped hover text: trial, strategy, state, objectives, test accuracy, k, input resolution, node and config."""
    lines = [f"<b>trial {int(row['number'])}</b> · {esc(row.get('strategy', ''))}"]
    if str(row.get("feasible", "")).lower() in ("false", "0"):
        lines.append("<i>infeasible (over a constraint)</i>")
    if pd.notna(row.get("stopped_at_epoch")):
        lines.append(f"<i>stopped early after epoch {esc(fmt(row['stopped_at_epoch']))} (figures at that epoch)</i>")
    for name in [*objectives, "test_accuracy", "k_final"]:
        if name in row.index and pd.notna(row[name]):
            lines.append(f"{esc(name)}: {esc(fmt(row[name]))}")
    if pd.notna(row.get(INPUT_COLUMN)):
        lines.append(f"input: {esc(fmt(row[INPUT_COLUMN]))} px")
    if pd.notna(row.get(ATTR_NODE)):
        lines.append(f"ran on node {esc(row[ATTR_NODE])}")
    shown = [c for c in configs if c != INPUT_COLUMN and pd.notna(row.get(c))]
    for c in shown[:MAX_HOVER_CONFIG]:
        lines.append(f"{esc(c.removeprefix('config.'))} = {esc(fmt(row[c]))}")
    if len(shown) > MAX_HOVER_CONFIG:
        lines.append(f"… {len(shown) - MAX_HOVER_CONFIG} more in the table")
    return "<br>".join(lines)


def primary_pair(objectives: Sequence[str]) -> tuple[str, str] | None:
    """(y, x) of the main trade-off plot: accuracy against FLOPs where both are searched."""
    if len(objectives) < 2:
        return None
    y = "accuracy" if "accuracy" in objectives else objectives[0]
    rest = [o for o in objectives if o != y]
    return y, ("flops" if "flops" in rest else rest[0])


def _log_axis(name: str, values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return objective_info(name).log_scale and len(finite) > 0 and bool((finite > 0).all())


def _num(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(float)


def _front_order(frame: pd.DataFrame, x: str, x_dir: str) -> pd.DataFrame:
    """Front points from best to worst x, the order in which an 'hv' step line traces the attainment."""
    return frame.assign(_x=_num(frame, x)).sort_values("_x", ascending=(x_dir == "minimize"), kind="stable")


def _budget(run: RunRecord, x: str) -> float | None:
    return run.space.limit(x)


def axis_range(values: np.ndarray, log: bool, pad: float = 0.06) -> list[float] | None:
    """An axis range that fits ``values`` with a margin (in log10 units on a log axis, as plotly takes
    them), so a line drawn far from the data (a budget) cannot squeeze the points to one edge."""
    finite = values[np.isfinite(values)]
    if log:
        finite = np.log10(finite[finite > 0])
    if len(finite) == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else (0.25 if log else max(abs(hi), 1.0) * 0.1)
    return [lo - pad * span - (0 if hi > lo else span), hi + pad * span + (0 if hi > lo else span)]


def _budget_trace(run: RunRecord, x: str, ys: np.ndarray, x_range: list[float] | None, log: bool
                  ) -> tuple[go.Scatter | None, dict[str, Any] | None]:
    """The budget as a dashed vertical line where it falls inside the axis range; beyond it, an arrow
    at the edge that says where the budget is (every point is within it)."""
    budget = _budget(run, x)
    finite = ys[np.isfinite(ys)]
    if budget is None or len(finite) == 0:
        return None, None
    name = f"{label(x)} budget ({esc(fmt(budget))})"
    where = math.log10(budget) if log and budget > 0 else budget
    if x_range is not None and not x_range[0] <= where <= x_range[1]:
        beyond = "right" if where > x_range[1] else "left"
        arrow = "→" if beyond == "right" else "←"
        return None, {"x": 1.0 if beyond == "right" else 0.0, "xref": "paper", "y": 1.0, "yref": "paper",
                      "xanchor": beyond, "yanchor": "bottom", "showarrow": False, "font": {"color": "#c0392b"},
                      "text": f"{name} {arrow} off the axis" if beyond == "right" else f"{arrow} {name} off the axis"}
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    trace = go.Scatter(x=[budget, budget], y=[lo - pad, hi + pad], mode="lines",
                       line={"color": "#c0392b", "dash": "dash", "width": 2}, name=name, hoverinfo="name")
    return trace, None


#: How each pick is marked on the front: (legend words, marker symbol, colour).
PICK_MARKS = {"knee": ("knee of the front", "star", "#d62728"),
              "budget": ("most accurate within the budget", "star-diamond", "#9467bd"),
              "accuracy": ("most accurate", "star-triangle-up", "#2ca02c")}


def pareto_figure(run: RunRecord, colours: Mapping[str, str], pareto: pd.Series,
                  picks: Mapping[str, int] | None = None) -> go.Figure | None:
    """Every complete trial on the main trade-off plane, the front joined by a step line; trials early
    stopping cut are drawn faded at the figures they stopped at (never on the front). ``picks``
    (how -> trial number: the knee, the budget pick) are marked with a star and named in the legend
    and beside the point."""
    pair = primary_pair(run.objectives)
    if pair is None:
        return None
    y, x = pair
    trials = run.trials
    complete = trials[(trials["state"] == "COMPLETE").to_numpy() & np.isfinite(_num(trials, x)) & np.isfinite(_num(trials, y))]
    if complete.empty:
        return None
    eligible = eligible_mask(complete, run.objectives).to_numpy()
    configs = config_columns(trials)
    fig = go.Figure()
    for strategy, group in complete.groupby("strategy", sort=True):
        ok = eligible[complete.index.get_indexer(group.index)]
        dense = not bool(group["sparse"].iloc[0])
        symbols = np.where(ok, "diamond" if dense else "circle", "x")
        fig.add_trace(
            go.Scatter(
                x=_num(group, x),
                y=_num(group, y),
                mode="markers",
                name=esc(strategy) + (" (dense baseline)" if dense else ""),
                marker={"color": colours[strategy], "symbol": symbols, "size": np.where(ok, 10, 8),
                        "opacity": 0.9, "line": {"width": 0.5, "color": "#333"}},
                hovertext=[hover_text(r, run.objectives, configs) for _, r in group.iterrows()],
                hoverinfo="text",
            )
        )
    stopped = trials[(trials["state"] == "PRUNED").to_numpy() & np.isfinite(_num(trials, x)) & np.isfinite(_num(trials, y))]
    for strategy, group in stopped.groupby("strategy", sort=True):
        fig.add_trace(
            go.Scatter(
                x=_num(group, x),
                y=_num(group, y),
                mode="markers",
                name=esc(strategy) + " (stopped early)",
                legendgroup="stopped early",
                marker={"color": colours.get(strategy, "#777"), "symbol": "circle-open", "size": 8, "opacity": 0.45},
                hovertext=[hover_text(r, run.objectives, configs) for _, r in group.iterrows()],
                hoverinfo="text",
            )
        )
    front = trials[pareto.to_numpy()]
    if len(front):
        front = _front_order(front, x, run.directions[x])
        two = len(run.objectives) == 2  # beyond two, the front seen on one plane is no staircase: rings only
        fig.add_trace(
            go.Scatter(
                x=_num(front, x),
                y=_num(front, y),
                mode="lines+markers" if two else "markers",
                line={"shape": "hv", "color": "#111", "width": 1.5},
                marker={"symbol": "circle-open", "size": 17, "color": "#111", "line": {"width": 2}},
                name="Pareto front" if two else "on the Pareto front (all objectives)",
                hovertext=[hover_text(r, run.objectives, configs) for _, r in front.iterrows()],
                hoverinfo="text",
            )
        )
    shown = pd.concat([complete, stopped])
    log = _log_axis(x, _num(shown, x))
    x_range = axis_range(_num(shown, x), log)
    budget, beyond = _budget_trace(run, x, _num(complete, y), x_range, log)
    if budget is not None:
        fig.add_trace(budget)
    for how, number in (picks or {}).items():
        row = trials[trials["number"] == number]
        if row.empty or how not in PICK_MARKS:
            continue
        words, symbol, colour = PICK_MARKS[how]
        px, py = float(_num(row, x)[0]), float(_num(row, y)[0])
        fig.add_trace(go.Scatter(x=[px], y=[py], mode="markers", name=f"{words}: trial {number}",
                                 marker={"symbol": symbol, "size": 22, "color": colour, "line": {"width": 1.5, "color": "#111"}},
                                 hovertext=[hover_text(row.iloc[0], run.objectives, configs)], hoverinfo="text"))
        fig.add_annotation(x=math.log10(px) if log and px > 0 else px, y=py, text=f"{how}: trial {number}",
                           showarrow=True, arrowhead=0, ax=40, ay=-30 if how == "knee" else 30,
                           font={"color": colour, "size": 13}, name=f"pick-{how}")
    for symbol, name in (("diamond", "dense baseline"), ("x", "infeasible (over a constraint)")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker={"symbol": symbol, "color": "#777", "size": 10}, hoverinfo="skip"))
    if beyond is not None:
        fig.add_annotation(**beyond)
    return _plane_layout(fig, x, y, shown, height=520, legend="strategy", x_range=x_range)


def _pair_axes(a: str, b: str) -> tuple[str, str]:
    """(y, x) of a pairwise panel: accuracy up the side where it is one of the two, else the first."""
    return (b, a) if b == "accuracy" else (a, b)


def pairwise_figure(run: RunRecord, colours: Mapping[str, str], pareto: pd.Series,
                    knee: int | None = None) -> go.Figure | None:
    """With three or more objectives: one panel per pair of objectives (three to a row) over the complete,
    feasible trials, the full front's trials ringed and the knee (a trial number) starred in every
    panel. Objectives that span decades are on log axes, both ways."""
    names = run.objectives
    if len(names) < 3:
        return None
    ok = run.eligible().to_numpy()
    pool = run.trials[ok]
    if pool.empty:
        return None
    pairs = list(combinations(names, 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.08, vertical_spacing=0.22 / rows)
    configs = config_columns(run.trials)
    front = pool[pareto.to_numpy()[ok]]
    starred = pool[pool["number"] == knee] if knee is not None else pool.iloc[:0]
    words, symbol, colour = PICK_MARKS["knee"]
    for i, (a, b) in enumerate(pairs):
        row, col = divmod(i, cols)
        where = {"row": row + 1, "col": col + 1}
        y, x = _pair_axes(a, b)
        for strategy, group in pool.groupby("strategy", sort=True):
            fig.add_trace(
                go.Scatter(x=_num(group, x), y=_num(group, y), mode="markers", name=esc(strategy),
                           legendgroup=esc(strategy), showlegend=i == 0,
                           marker={"color": colours[strategy], "size": 8,
                                   "symbol": "circle" if bool(group["sparse"].iloc[0]) else "diamond"},
                           hovertext=[hover_text(r, names, configs) for _, r in group.iterrows()],
                           hoverinfo="text"),
                **where,
            )
        fig.add_trace(
            go.Scatter(x=_num(front, x), y=_num(front, y), mode="markers", name="on the Pareto front",
                       legendgroup="front", showlegend=i == 0,
                       marker={"symbol": "circle-open", "size": 15, "color": "#111", "line": {"width": 2}},
                       hoverinfo="skip"),
            **where,
        )
        if not starred.empty:
            fig.add_trace(
                go.Scatter(x=_num(starred, x), y=_num(starred, y), mode="markers", name=f"{words}: trial {knee}",
                           legendgroup="knee", showlegend=i == 0,
                           marker={"symbol": symbol, "size": 18, "color": colour, "line": {"width": 1.5, "color": "#111"}},
                           hovertext=[hover_text(starred.iloc[0], names, configs)], hoverinfo="text"),
                **where,
            )
        fig.update_xaxes(title_text=label(x), type="log" if _log_axis(x, _num(pool, x)) else "linear", **where)
        fig.update_yaxes(title_text=label(y), type="log" if _log_axis(y, _num(pool, y)) else "linear", **where)
    fig.update_layout(height=360 * rows + 60)
    return fig


def _log_ticks(lo: float, hi: float) -> np.ndarray:
    """Tick positions (log10) between ``lo`` and ``hi``: whole decades where there are three or more,
    else 1-2-5 steps, else every whole multiple of a power of ten, else five even steps."""
    decades = np.arange(math.ceil(lo), math.floor(hi) + 1, dtype=float)
    if len(decades) >= 3:
        return decades
    for digits in ((1, 2, 5), range(1, 10)):
        steps = np.log10([d * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for d in digits])
        steps = steps[(steps >= lo - 1e-9) & (steps <= hi + 1e-9)]
        if len(steps) >= 3:
            return steps
    return np.linspace(lo, hi, 5)


def _objective_dimension(name: str, direction: str, values: np.ndarray) -> dict[str, Any]:
    """One parcoords axis of an objective, best at the top: a minimised objective's axis runs downward
    (its range reversed), one spanning decades is drawn in log10 with ticks in its own units, and the
    label says which way the objective goes."""
    log = _log_axis(name, values)
    shown = np.log10(values) if log else values
    lo, hi = float(np.min(shown)), float(np.max(shown))
    if hi == lo:
        lo, hi = lo - (0.5 if log else max(abs(lo), 1.0) * 0.1), hi + (0.5 if log else max(abs(hi), 1.0) * 0.1)
    way = "maximised" if direction == "maximize" else "minimised"
    dimension = {"label": f"{label(name)}<br>({way}{', log' if log else ''}; best at top)", "values": shown,
                 "range": [lo, hi] if direction == "maximize" else [hi, lo]}
    # Ticks of our own: plotly's would write powers of ten as exponents, and print the range's ends
    # (to five digits) over the axis label.
    ticks = _log_ticks(lo, hi) if log else _linear_ticks(lo, hi)
    dimension.update(tickvals=ticks.tolist(), ticktext=[esc(fmt(float(10 ** t if log else t))) for t in ticks])
    return dimension


def _linear_ticks(lo: float, hi: float) -> np.ndarray:
    """Round tick positions between ``lo`` and ``hi``: steps of 1, 2 or 5 times a power of ten, four to ten of them."""
    raw = (hi - lo) / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(f * magnitude for f in (1, 2, 5, 10) if f * magnitude >= raw)
    ticks = np.arange(math.ceil(lo / step - 1e-9) * step, hi + step * 1e-9, step)
    return np.round(ticks, 12)


#: Parcoords lines of the objectives view: (code, colour, its name, what the lines are), drawn in this order.
FRONT_LINES = ((0, "#c7c7c7", "grey", "other complete, feasible trials"), (1, "#1f77b4", "blue", "on the Pareto front"),
               (2, PICK_MARKS["knee"][2], "red", "the knee"))


def objectives_parallel_figure(run: RunRecord, pareto: pd.Series, knee: int | None = None) -> go.Figure | None:
    """With three or more objectives: parallel coordinates over the strategy and the objectives, one line
    per complete, feasible trial; the front's lines in blue over the grey rest, the knee's in red,
    every objective's axis with its best value at the top."""
    names = run.objectives
    if len(names) < 3:
        return None
    ok = run.eligible().to_numpy()
    pool = run.trials[ok].assign(_code=pareto.to_numpy()[ok].astype(int))
    if pool.empty:
        return None
    if knee is not None:
        pool.loc[pool["number"] == knee, "_code"] = 2
    pool = pool.sort_values(["_code", "number"], kind="stable")  # later lines are drawn on top
    dims: list[dict[str, Any]] = []
    strategy_axis = _parallel_dimension("strategy", pool["strategy"])
    if strategy_axis is not None:
        dims.append(strategy_axis)
    dims += [_objective_dimension(o, run.directions[o], _num(pool, o)) for o in names]
    top = len(FRONT_LINES) - 1
    scale = []
    for code, colour, _, _ in FRONT_LINES:  # a stepped colour scale: one flat band per code
        scale += [[max(0.0, (code - 0.5) / top), colour], [min(1.0, (code + 0.5) / top), colour]]
    fig = go.Figure(go.Parcoords(
        line={"color": pool["_code"].to_numpy(float), "colorscale": scale, "cmin": 0, "cmax": top, "showscale": False},
        dimensions=dims,
        labelangle=0, labelside="top",
    ))
    fig.update_layout(height=460, margin={"l": 120, "r": 80, "t": 90, "b": 30})
    return fig


def strategy_fronts_figure(run: RunRecord, colours: Mapping[str, str]) -> go.Figure | None:
    """Each strategy's own front on the main plane: which design wins where."""
    pair = primary_pair(run.objectives)
    if pair is None:
        return None
    y, x = pair
    pool = run.trials[run.eligible().to_numpy()]
    if pool.empty:
        return None
    configs = config_columns(run.trials)
    fig = go.Figure()
    for strategy, group in pool.groupby("strategy", sort=True):
        values = np.column_stack([_num(group, o) for o in run.objectives])
        front = _front_order(group[pareto_mask(values, [run.directions[o] for o in run.objectives])], x, run.directions[x])
        dense = not bool(group["sparse"].iloc[0])
        fig.add_trace(
            go.Scatter(
                x=_num(front, x), y=_num(front, y), mode="lines+markers",
                name=esc(strategy) + f" ({len(front)} of {len(group)})",
                line={"shape": "hv", "color": colours[strategy], "width": 2, "dash": "dot" if dense else "solid"},
                marker={"color": colours[strategy], "size": 9, "symbol": "diamond" if dense else "circle"},
                hovertext=[hover_text(r, run.objectives, configs) for _, r in front.iterrows()],
                hoverinfo="text",
            )
        )
    log = _log_axis(x, _num(pool, x))
    x_range = axis_range(_num(pool, x), log)
    budget, beyond = _budget_trace(run, x, _num(pool, y), x_range, log)
    if budget is not None:
        fig.add_trace(budget)
    if beyond is not None:
        fig.add_annotation(**beyond)
    return _plane_layout(fig, x, y, pool, height=460, legend="strategy (front of trials)", x_range=x_range)


def _plane_layout(fig: go.Figure, x: str, y: str, points: pd.DataFrame, *, height: int, legend: str,
                  x_range: list[float] | None = None) -> go.Figure:
    """Axis titles of an objective plane (x on a log scale where ``points`` span decades, its range the
    points' own), height, legend title."""
    xaxis: dict[str, Any] = {"title": {"text": label(x)}, "type": "log" if _log_axis(x, _num(points, x)) else "linear"}
    if x_range is not None:
        xaxis["range"] = x_range
    fig.update_layout(xaxis=xaxis, yaxis={"title": {"text": label(y)}}, height=height,
                      legend={"title": {"text": legend}})
    return fig


def hypervolume_figure(by_number: pd.DataFrame, by_time: pd.DataFrame) -> go.Figure:
    """Hypervolume of the running front against trial number and against wall-clock minutes: the
    normalised figure (``normalized`` column, 0 to 1) where the objectives allow it, else the raw one."""
    column = "normalized" if "normalized" in by_number.columns else "hypervolume"
    name = "normalised hypervolume" if column == "normalized" else "hypervolume"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by trial number", "by wall-clock time"),
                        horizontal_spacing=0.1)
    fig.add_trace(go.Scatter(x=by_number["number"], y=by_number[column], mode="lines+markers",
                             line={"shape": "hv", "color": "#1f77b4"}, marker={"size": 5}, name="by trial",
                             hovertemplate="trial %{x}<br>" + name + " %{y:.4g}<extra></extra>"), row=1, col=1)
    minutes = by_time["elapsed_s"].to_numpy(float) / 60.0
    fig.add_trace(go.Scatter(x=minutes, y=by_time[column], mode="lines+markers",
                             line={"shape": "hv", "color": "#ff7f0e"}, marker={"size": 5}, name="by time",
                             text=[f"trial {int(n)}" for n in by_time["number"]],
                             hovertemplate="%{text}<br>%{x:.1f} min<br>" + name + " %{y:.4g}<extra></extra>"),
                  row=1, col=2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="minutes since the first trial started", row=1, col=2)
    trials = int(by_number["number"].max()) + 1 if len(by_number) else 1
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=max(1, math.ceil(trials / 10)), row=1, col=1)  # whole trials
    fig.update_yaxes(title_text=name, rangemode="tozero")
    fig.update_layout(height=380, showlegend=False)
    return fig


NA = "n/a"


def _parallel_dimension(column: str, col: pd.Series) -> dict[str, Any] | None:
    """One parcoords axis; keys a strategy does not use sit on an extra 'n/a' tick below the range."""
    present = col.dropna()
    if present.empty:
        return None
    name = esc(column.removeprefix("config."))
    numeric = pd.to_numeric(present, errors="coerce").astype(float)  # Int64 config columns too
    missing = bool(col.isna().any())
    if column != "strategy" and numeric.notna().all() and not pd.api.types.is_bool_dtype(col):
        lo, hi = float(numeric.min()), float(numeric.max())
        if lo == hi:
            return None  # one value (where set at all): the strategy axis already says as much
        if not missing:
            return {"label": name, "values": pd.to_numeric(col).astype(float).to_numpy()}
        fill = lo - 0.15 * (hi - lo)
        distinct = sorted(set(numeric.tolist()))
        few_ints = len(distinct) <= 8 and all(float(v).is_integer() for v in distinct)
        ticks = distinct if few_ints else np.linspace(lo, hi, 5).tolist()
        return {"label": name, "values": pd.to_numeric(col).astype(float).fillna(fill).to_numpy(),
                "tickvals": [fill, *ticks], "ticktext": [NA, *[esc(fmt(t)) for t in ticks]]}
    cats = sorted(present.astype(str).unique())
    if len(cats) < 2 and column != "strategy":
        return None
    if missing:
        cats = [NA, *cats]
    codes = col.map(lambda v: NA if pd.isna(v) else str(v)).map({c: i for i, c in enumerate(cats)})
    return {"label": name, "values": codes.to_numpy(float), "tickvals": list(range(len(cats))),
            "ticktext": [esc(c) for c in cats]}


def parallel_figure(run: RunRecord, ranking: Sequence[str] = (), max_config_axes: int = 12
                    ) -> tuple[go.Figure | None, list[str], list[str]]:
    """Parallel coordinates over the config and the objectives of complete, feasible trials, coloured by the
    first objective. Past ``max_config_axes`` varying config keys, those first in ``ranking`` (e.g.
    by importance) are kept. Returns the figure, the conditional keys shown (at 'n/a' where a
    strategy does not use them) and the keys left out."""
    trials = run.trials
    rows = trials[run.eligible().to_numpy()]  # over-budget trials were never trained: their accuracy is not one
    values = np.column_stack([_num(rows, o) for o in run.objectives]) if len(rows) else np.empty((0, 0))
    if len(rows):
        rows = rows[np.isfinite(values).all(axis=1)]
    if rows.empty:
        return None, [], []
    candidates = [(c, d) for c in config_columns(trials) if (d := _parallel_dimension(c, rows[c])) is not None]
    left_out: list[str] = []
    if len(candidates) > max_config_axes:
        # the input resolution, when it varies, is always an axis: it is the cost axis every strategy shares
        order = {key: i for i, key in enumerate([INPUT_COLUMN.removeprefix("config."), *ranking])}
        ranked = sorted(range(len(candidates)),
                        key=lambda i: (order.get(candidates[i][0].removeprefix("config."), len(order)), i))
        keep = set(ranked[:max_config_axes])
        left_out = [c.removeprefix("config.") for i, (c, _) in enumerate(candidates) if i not in keep]
        candidates = [cd for i, cd in enumerate(candidates) if i in keep]
    strategy_axis = _parallel_dimension("strategy", rows["strategy"])
    dims: list[dict[str, Any]] = [strategy_axis] if strategy_axis is not None else []
    dims += [d for _, d in candidates]
    conditional = [c.removeprefix("config.") for c, _ in candidates if rows[c].isna().any()]
    for o in run.objectives:
        dims.append({"label": esc(o), "values": _num(rows, o)})
    first = run.objectives[0]
    fig = go.Figure(go.Parcoords(
        line={"color": _num(rows, first), "colorscale": "Viridis", "showscale": True,
              "reversescale": run.directions[first] == "minimize", "colorbar": {"title": {"text": label(first)}}},
        dimensions=dims,
    ))
    fig.update_layout(height=480, margin={"l": 130, "r": 150, "t": 70, "b": 30})
    return fig, conditional, left_out


def importance_figure(importances: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Grouped horizontal bars: for each objective, how much each parameter mattered."""
    params = sorted({p for imp in importances.values() for p in imp},
                    key=lambda p: sum(imp.get(p, 0.0) for imp in importances.values()))
    fig = go.Figure()
    for objective, imp in importances.items():
        fig.add_trace(go.Bar(
            y=[esc(p) for p in params], x=[imp.get(p, 0.0) for p in params], orientation="h", name=label(objective),
            hovertemplate="%{y}: %{x:.3f}<extra>" + label(objective) + "</extra>",
        ))
    fig.update_layout(barmode="group", height=max(320, 60 + 22 * len(params) * max(1, len(importances))),
                      xaxis={"title": {"text": "importance (sums to 1 per objective)"}},
                      legend={"title": {"text": "objective"}})
    return fig


def k_path(history: list[dict[str, Any]]) -> tuple[list[float], list[Any]]:
    """(epochs, k): k at each epoch's end, with the k rule's decision points within epochs (``k_trace``)
    placed at the fraction of the epoch's steps they came at, where the history says its steps."""
    xs: list[float] = []
    ys: list[Any] = []
    previous_steps = 0
    for j, row in enumerate(history):
        epoch = row.get("epoch", j + 1)
        steps = row.get("steps")
        if isinstance(steps, int) and steps > previous_steps:
            for point in row.get("k_trace") or []:
                fraction = (point.get("step", 0) + 1 - previous_steps) / (steps - previous_steps)
                xs.append(epoch - 1 + min(max(fraction, 0.0), 1.0))
                ys.append(point.get("k"))
            previous_steps = steps
        xs.append(epoch)
        ys.append(row.get("k"))
    return xs, ys


def learning_curves_figure(curves: Mapping[int, list[dict[str, Any]]], strategies: Mapping[int, str]
                           ) -> go.Figure | None:
    """Validation accuracy per epoch and k through training (with the k rule's decisions within epochs)
    for the given trials (the Pareto ones)."""
    if not curves:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "k (tokens / pixels / regions kept)"),
                        horizontal_spacing=0.1)
    for i, (number, history) in enumerate(sorted(curves.items())):
        epochs = [h.get("epoch", j) for j, h in enumerate(history)]
        strategy = strategies.get(number, "")
        colour = PALETTE[i % len(PALETTE)]  # one colour per trial: several can share a strategy
        name = f"trial {number} · {esc(strategy)}"
        for col, key in ((1, "val_accuracy"), (2, "k")):
            xs, ys = (epochs, [h.get(key) for h in history]) if key != "k" else k_path(history)
            ys = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in ys]
            if not any(v is not None for v in ys):
                continue
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=str(number),
                                     showlegend=col == 1, line={"color": colour}, marker={"size": 5},
                                     hovertemplate=name + "<br>epoch %{x}<br>%{y:.4g}<extra></extra>"),
                          row=1, col=col)
    last = max((len(history) for history in curves.values()), default=1)
    fig.update_xaxes(title_text="epoch", tickmode="linear", tick0=0, dtick=max(1, math.ceil(last / 10)))  # whole epochs
    fig.update_layout(height=400)
    return fig
