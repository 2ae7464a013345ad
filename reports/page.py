"""The report page: one self-contained HTML string built from a loaded run.

Safety rules kept here: every run-supplied string goes through ``esc`` before it reaches markup;
figure JSON embedded in <script> has ``<``, ``>`` and ``&`` written as \\u escapes, so no value can
close the script element; plotly.js is inlined once, so the page opens offline.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from plotly.offline import get_plotlyjs

from cellsparse.commands import command as spell
from cellsparse.objective_info import ideal_point
from cellsparse.rundir import (
    ATTR_NODE,
    HISTORY_FILE,
    INPUT_COLUMN,
    LOOKED_AT_FILE,
    METRICS_FILE,
    STATES,
    RunRecord,
    config_columns,
    load_json,
)

from . import figures
from .figures import esc, fmt
from .images import looked_at_pair
from .importance import param_importances
from .picks import hypervolume_history, most_accurate, most_accurate_within_budget, pick_trial

MAX_LOOKED_AT_TRIALS = 12  # Pareto trials whose images are shown
IMAGES_PER_TRIAL = 4
MAX_CURVES = 20  # Pareto trials whose learning curves are drawn
ERROR_CHARS = 300

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0;font-size:1.5em}
header p{margin:4px 0 0;opacity:.85}nav{padding:8px 32px;background:#e9eef4;position:sticky;top:0;z-index:5}
nav a{margin-right:14px;color:#1d3557;text-decoration:none;font-size:.92em}
main{padding:0 32px 40px;max-width:1500px}section{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:12px 20px;margin:18px 0}h2{font-size:1.2em;color:#1d3557;margin:.4em 0}
.note{color:#555;font-size:.92em;margin:.4em 0}.warn{color:#8a4b00;background:#fff4e0;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;font-size:.86em}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f1f4f8}.kv th{width:14em;font-weight:600}.grid{display:flex;flex-wrap:wrap;gap:18px}
.grid>div{flex:1 1 360px}table.sortable th{cursor:pointer;white-space:nowrap;position:sticky;top:0;z-index:1}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
tr.front td{background:#fffbe6}.tablewrap{overflow:auto;max-height:720px}
.picks{display:flex;flex-wrap:wrap;gap:14px}.pick{border:1px solid #ccd;border-radius:6px;padding:10px 14px;flex:1 1 300px}
.pick h3{margin:0 0 4px;font-size:1em}code.cmd{display:block;background:#f4f4f4;padding:6px;margin:6px 0;
word-break:break-all;user-select:all}button.copy{font-size:.85em}
.cells{display:flex;flex-wrap:wrap;gap:10px}.cell{text-align:center;font-size:.78em;width:236px}
.cell img{width:112px;height:112px;image-rendering:pixelated;border:1px solid #ccc;object-fit:contain;background:#000}
.trialimgs{margin:10px 0 16px}.plot{min-height:300px}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.82em}
"""

JS = """
(function(){
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, i){
      th.addEventListener('click', function(){
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute('data-dir') !== 'asc';
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('data-dir'); h.className = ''; });
        th.setAttribute('data-dir', asc ? 'asc' : 'desc'); th.className = asc ? 'asc' : 'desc';
        function key(r){ var c = r.cells[i]; return c ? (c.getAttribute('data-v') || '') : ''; }
        var numeric = rows.every(function(r){ var v = key(r); return v === '' || isFinite(Number(v)); });
        rows.sort(function(a, b){
          var x = key(a), y = key(b);
          if (x === '' || y === '') { return (x === '') - (y === ''); }
          var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
          return asc ? d : -d;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('button.copy').forEach(function(button){
    button.addEventListener('click', function(){
      var code = document.getElementById(button.getAttribute('data-target'));
      var range = document.createRange(); range.selectNodeContents(code);
      var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      var done = function(){ button.textContent = 'copied'; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(code.textContent).then(done, function(){ button.textContent = 'selected: press Ctrl+C'; });
      } else { button.textContent = 'selected: press Ctrl+C'; }
    });
  });
})();
"""

PLOT_CONFIG = {"responsive": True, "displaylogo": False}
#: In every report's head: how ``reports.build`` knows a file at ``--out`` is a report it may replace.
GENERATOR_TAG = '<meta name="generator" content="cellsparse report">'


def script_json(value: Any) -> str:
    """JSON safe inside <script>: no literal <, > or & anywhere, so nothing can end the element."""
    return value.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace(
        "\u2028", "\\u2028").replace("\u2029", "\\u2029")


class Page:
    """Collects sections and figures; figures become divs filled by one Plotly.newPlot each."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, str]] = []
        self.plots = 0

    def figure(self, fig: go.Figure) -> str:
        self.plots += 1
        div = f"plot-{self.plots}"
        fig.update_layout(template="plotly_white", font={"size": 12})
        if fig.layout.margin.t is None:
            fig.update_layout(margin={"t": 50})
        payload = script_json(pio.to_json(fig, validate=False))
        height = int(fig.layout.height or 450)  # responsive plots fill their div: give it the figure's height
        return (f'<div class="plot" id="{div}" style="height:{height}px"></div>\n<script>(function(){{var f = {payload};'
                f'Plotly.newPlot("{div}", f.data, f.layout, {json.dumps(PLOT_CONFIG)});}})();</script>')

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def render(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{a}">{t}</a>' for a, t, _ in self.sections)
        body = "\n".join(f'<section id="{a}"><h2>{t}</h2>\n{b}\n</section>' for a, t, b in self.sections)
        return (
            f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{GENERATOR_TAG}"
            f"<title>{title}</title>\n<style>{CSS}</style>\n"
            f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
            f"<header><h1>{title}</h1><p>{subtitle}</p></header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
            f"<script>{JS}</script>\n</body></html>\n"
        )


# ---------------------------------------------------------------------------------------- helpers


def note(text: str, warn: bool = False) -> str:
    """A paragraph of already-escaped text."""
    return f'<p class="{"note warn" if warn else "note"}">{text}</p>'


def kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    """Two-column table; keys and values escaped (nested values shown as compact YAML)."""
    cells = []
    for key, value in rows:
        if isinstance(value, (dict, list)):
            text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=100).strip()
        else:
            text = fmt(value) if value is not None else "—"
        cells.append(f"<tr><th>{esc(key)}</th><td>{esc(text)}</td></tr>")
    return '<table class="kv">' + "".join(cells) + "</table>"


def duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "—"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def display_path(path: Path) -> str:
    """The run directory as the user can paste it: relative to the working directory when inside it."""
    resolved = Path(path).resolve()
    try:
        rel = os.path.relpath(resolved, Path.cwd())
    except ValueError:  # another drive on Windows
        return str(resolved)
    return str(resolved) if rel.startswith("..") else rel


def _cell(value: Any, column: str = "") -> tuple[str, str]:
    """(data-v sort key, shown text) for a table cell, both unescaped."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "", ""
    if column.startswith("datetime_"):
        stamp = pd.to_datetime(str(value), errors="coerce", utc=True)
        return str(value), str(value) if pd.isna(stamp) else stamp.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (bool, np.bool_)):
        return str(int(bool(value))), str(bool(value)).lower()
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value)), fmt(value)
    return str(value), str(value)


# --------------------------------------------------------------------------------------- sections


def summary_section(run: RunRecord, counts: Mapping[str, int]) -> str:
    space, info = run.space, run.info
    data, search = space.data, space.search
    sampler = search.get("sampler") or {}
    strategies = space.strategies or sorted(run.trials["strategy"].unique())
    started, finished = info.get("started_at"), info.get("finished_at")
    wall = info.get("wall_time_s")
    wall_text = duration(wall) if isinstance(wall, (int, float)) else "—"
    if wall_text == "—":
        start = pd.to_datetime(run.trials.get("datetime_start"), errors="coerce", utc=True, format="ISO8601")
        end = pd.to_datetime(run.trials.get("datetime_complete"), errors="coerce", utc=True, format="ISO8601")
        if start is not None and end is not None and start.notna().any() and end.notna().any():
            wall_text = duration((end.max() - start.min()).total_seconds()) + " (from trial times)"
    run_rows = [
        ("run directory", display_path(run.path)),
        ("started", started), ("finished", finished if finished else "not finished (or still running)"),
        ("wall time", wall_text), ("command", info.get("command")),
    ]
    count_rows = [(k, counts[k]) for k in ("total", "complete", "failed", "pruned", "running", "waiting",
                                           "infeasible", "on the Pareto front")]
    data_rows = [(k, data.get(k)) for k in data]
    space_rows = [
        ("strategies", ", ".join(map(str, strategies))),
        ("objectives", ", ".join(f"{k} ({'max' if v == 'maximize' else 'min'})" for k, v in run.directions.items())),
        ("constraints", dict(space.constraints)),
        ("sampler", f"{sampler.get('name', '—')} (seed {sampler.get('seed', space.seed if space.seed is not None else '—')})"),
        ("sampler options", sampler.get("options") or {}),
        ("trials requested", search.get("trials")), ("backend", search.get("backend") or info.get("backend")),
        ("max concurrent", search.get("max_concurrent")), ("resources per trial", search.get("resources")),
        ("seed", space.seed),
    ]
    versions = info.get("versions") or {}
    machine = info.get("machine") or {}
    parts = [
        '<div class="grid">',
        f"<div><h3>Run</h3>{kv_table(run_rows)}<h3>Trials</h3>{kv_table(count_rows)}</div>",
        f"<div><h3>Data</h3>{kv_table(data_rows) if data_rows else note('no data section in space.yaml')}"
        f"<h3>Search</h3>{kv_table(space_rows)}</div>",
        f"<div><h3>Machine</h3>{kv_table(machine.items()) if machine else note('not recorded')}"
        f"<h3>Library versions</h3>{kv_table(versions.items()) if versions else note('not recorded')}</div>",
        "</div>",
    ]
    if run.notes:
        parts.append("".join(note(esc(n), warn=True) for n in run.notes))
    resolved = yaml.safe_dump(dict(run.space.raw), sort_keys=False, default_flow_style=False)
    parts.append(f"<details><summary>The resolved search space (space.yaml)</summary><pre>{esc(resolved)}</pre></details>")
    return "\n".join(parts)


def state_counts(run: RunRecord, pareto: pd.Series) -> dict[str, int]:
    states = run.trials["state"]
    complete = states.eq("COMPLETE")
    infeasible = complete & ~run.trials["feasible"]
    counts = {"total": len(states), "infeasible": int(infeasible.sum()), "on the Pareto front": int(pareto.sum())}
    for state, key in zip(STATES, ("complete", "failed", "pruned", "running", "waiting"), strict=True):
        counts[key] = int(states.eq(state).sum())
    return counts


def pareto_section(page: Page, run: RunRecord, colours: Mapping[str, str], pareto: pd.Series) -> str:
    eligible = int(run.eligible().sum())
    parts: list[str] = []
    if len(run.objectives) < 2:
        return note("Only one objective was searched, so there is no trade-off to draw; see the trials table.")
    if eligible == 0:
        parts.append(note("No trial has completed within the constraints yet, so there is no Pareto front. "
                          "Failed, pruned and infeasible trials are listed in the table below.", warn=True))
    elif eligible == 1:
        parts.append(note("Only one trial has completed within the constraints: the front is that single trial.",
                          warn=True))
    picks = front_picks(run)
    fig = figures.pareto_figure(run, colours, pareto, picks)
    many = len(run.objectives) > 2
    if fig is not None:
        marked = "; ".join(f"{esc(figures.PICK_MARKS[how][0])}: trial {number}" for how, number in picks.items())
        front_words = (f"Black rings mark the {int(pareto.sum())} trial(s) on the Pareto front of all "
                       f"{len(run.objectives)} objectives ({esc(', '.join(run.objectives))}); on this plane some "
                       "of them look dominated, being on the front through an objective not drawn. " if many else
                       f"The black step line joins the {int(pareto.sum())} trial(s) on the "
                       f"Pareto front ({esc(', '.join(run.objectives))}). ")
        parts.append(note(
            "Every complete trial, coloured by strategy; circles are sparse designs, diamonds the dense baselines, "
            "crosses trials over a constraint. " + front_words
            + (f"Stars mark the picks of the box below ({marked}). " if marked else "")
            + "Hover a point for its configuration."))
        parts.append(page.figure(fig))
    knee = picks.get("knee")
    pair_fig = figures.pairwise_figure(run, colours, pareto, knee)
    if pair_fig is not None:
        parts.append('<h3 id="pareto-pairs">Three or more objectives: each pair</h3>')
        parts.append(note("Every pair of objectives over the complete, feasible trials, with the trials on the full "
                          "front ringed (a trial can be on the front through an objective not drawn)"
                          + (f" and the knee of all {len(run.objectives)} objectives starred (trial {knee})" if knee is not None
                             else "") + "."))
        parts.append(page.figure(pair_fig))
    lines_fig = figures.objectives_parallel_figure(run, pareto, knee)
    if lines_fig is not None:
        colours_words = "; ".join(f"{words}: {name}" for _, _, name, words in figures.FRONT_LINES)
        parts.append('<h3 id="pareto-lines">All objectives at once</h3>')
        parts.append(note("Parallel coordinates: one line per complete, feasible trial through its strategy and every "
                          "objective, each axis turned so that its best value is at the top (a minimised objective's "
                          f"axis runs downward); {esc(colours_words)}. A front trial's line crosses the others: "
                          "it gives up one objective for another. Drag along an axis to filter."))
        parts.append(page.figure(lines_fig))
    return "\n".join(parts)


def hypervolume_section(page: Page, run: RunRecord) -> str:
    point, origin = run.space.reference_point()
    if point is None:
        return note("Hypervolume cannot be computed: " + esc(origin) + ".", warn=True)
    shown = ", ".join(f"{esc(k)} = {esc(fmt(v))}" for k, v in point.items())
    parts = [note(f"Reference point: <b>{shown}</b> ({esc(origin)}). It is declared before the run and never "
                  "fitted to the run's results, so hypervolumes of runs with the same point can be compared. "
                  "Only complete, feasible trials count."
                  + (f" The volume is over all {len(run.objectives)} objectives, computed exactly "
                     "(cellsparse.pareto.hypervolume)." if len(run.objectives) > 2 else "")),
             ]
    if len(run.objectives) < 2:
        return note("Hypervolume needs at least two objectives.")
    by_number = hypervolume_history(run.trials, run.directions, point, by="number")
    by_time = hypervolume_history(run.trials, run.directions, point, by="time")
    if by_number.empty:
        parts.append(note("No trials yet.", warn=True))
        return "\n".join(parts)
    final = float(by_number["hypervolume"].iloc[-1])
    empty = (" (no complete, feasible trial is better than the reference point in every objective)" if final == 0 else "")
    ideal = ideal_point(run.objectives)
    if "normalized" in by_number.columns and ideal is not None:
        corner = ", ".join(f"{esc(k)} = {esc(fmt(v))}" for k, v in zip(run.objectives, ideal, strict=True))
        parts.append(note(
            f'Final normalised hypervolume: <b id="hv-normalised">{float(by_number["normalized"].iloc[-1]):.4f}</b>{empty}: '
            f"the share of the box between the reference point ({shown}) and the ideal point ({corner}) that the "
            f"front dominates, 1 being a model at the ideal; the same normalisation docs/benchmarks.md quotes "
            f"(cellsparse.pareto.normalized_hypervolume). Raw: {esc(fmt(final))}."))
    else:
        parts.append(note(f"Final hypervolume: <b>{esc(fmt(final))}</b>{empty} (not normalised: an objective declares "
                          "no ideal value)"))
    parts.append(page.figure(figures.hypervolume_figure(by_number, by_time)))
    return "\n".join(parts)


def strategy_section(page: Page, run: RunRecord, colours: Mapping[str, str]) -> str:
    fig = figures.strategy_fronts_figure(run, colours)
    if fig is None:
        return note("No complete, feasible trials to draw per-strategy fronts from.")
    pool = run.trials[run.eligible().to_numpy()]
    counts = pool.groupby("strategy").size()
    text = ", ".join(f"{esc(s)}: {n}" for s, n in counts.items())
    return note(f"Each strategy's own front (complete, feasible trials per strategy: {text}). Dotted lines are "
                "the dense baselines.") + page.figure(fig)


def _ranking(importances: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Config keys by their largest importance over the objectives (journal names may carry a
    'strategy.' prefix; the key is the last dotted part)."""
    best: dict[str, float] = {}
    for imp in importances.values():
        for param, value in imp.items():
            key = param.rsplit(".", 1)[-1]
            best[key] = max(best.get(key, 0.0), float(value))
    return sorted(best, key=lambda k: -best[k])


def parameters_section(page: Page, run: RunRecord) -> str:
    importances, why = param_importances(run)
    parts = []
    fig, conditional, left_out = figures.parallel_figure(run, _ranking(importances))
    if fig is None:
        parts.append(note("No complete, feasible trials to draw parallel coordinates from."))
    else:
        parts.append(note("Parallel coordinates over the configuration and the objectives of complete, feasible trials. "
                          "Drag along an axis to filter."
                          + (f" 'n/a' marks keys that a trial's strategy does not use "
                             f"({esc(', '.join(conditional))})." if conditional else "")
                          + (" Left out to keep the plot readable (the most important keys are kept): "
                             f"{esc(', '.join(left_out))}." if left_out else "")))
        parts.append(page.figure(fig))
    parts.append("<h3>Parameter importance per objective</h3>")
    parts.append(note(esc(why) + "."))
    if importances:
        parts.append(page.figure(figures.importance_figure(importances)))
    return "\n".join(parts)


def _ordered_front(run: RunRecord, pareto: pd.Series) -> pd.DataFrame:
    front = run.trials[pareto.to_numpy()]
    first = run.objectives[0]
    return front.sort_values(first, ascending=run.directions[first] == "minimize", kind="stable")


def curves_section(page: Page, run: RunRecord, pareto: pd.Series) -> str:
    front = _ordered_front(run, pareto).head(MAX_CURVES)
    if front.empty:
        return note("No Pareto trials yet.")
    curves: dict[int, list[dict[str, Any]]] = {}
    missing = []
    for number in front["number"]:
        history = load_json(run.trial_dir(number) / HISTORY_FILE)
        if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
            curves[int(number)] = history
        else:
            missing.append(str(int(number)))
    strategies = dict(zip(front["number"].astype(int), front["strategy"], strict=True))
    fig = figures.learning_curves_figure(curves, strategies)
    parts = [note("Validation accuracy and k per epoch of the trials on the Pareto front"
                  + (f" (the first {MAX_CURVES} by {esc(run.objectives[0])})" if int(pareto.sum()) > MAX_CURVES else "")
                  + ".")]
    if fig is not None:
        parts.append(page.figure(fig))
    if missing:
        parts.append(note("No history.json for trial(s) " + esc(", ".join(missing)) + "."))
    return "\n".join(parts)


def _class_name(names: Sequence[str] | None, index: Any) -> str:
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    return str(names[i]) if names is not None and 0 <= i < len(names) else str(i)


def looked_at_section(run: RunRecord, pareto: pd.Series) -> str:
    front = _ordered_front(run, pareto).head(MAX_LOOKED_AT_TRIALS)
    if front.empty:
        return note("No Pareto trials yet.")
    parts = [note("For each Pareto trial, a few validation images: left as given, right with the pixels/regions "
                  "the model used tinted and the rest dimmed. 'used' is the fraction of the image that was looked at.")]
    absent: list[str] = []
    for _, row in front.iterrows():
        number = int(row["number"])
        path = run.trial_dir(number) / LOOKED_AT_FILE
        if not path.is_file():
            absent.append(str(number))
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                images, used = npz["images"], npz["used"]
                labels = npz["labels"] if "labels" in npz.files else None
                preds = npz["preds"] if "preds" in npz.files else None
                names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
            cells = []
            fractions = []
            for i in range(min(IMAGES_PER_TRIAL, len(images))):
                plain, tinted, fraction = looked_at_pair(images[i], used[i])
                fractions.append(fraction)
                caption = []
                if labels is not None and i < len(labels):
                    caption.append(f"label: {esc(_class_name(names, labels[i]))}")
                if preds is not None and i < len(preds):
                    caption.append(f"predicted: {esc(_class_name(names, preds[i]))}")
                caption.append(f"used {fraction:.0%}")
                cells.append(f'<div class="cell"><img src="{plain}" alt="image"> <img src="{tinted}" '
                             f'alt="used pixels"><br>{" · ".join(caption)}</div>')
            all_used = float(np.clip(np.nan_to_num(np.asarray(used, dtype=float)), 0, 1).mean()) if len(used) else 0.0
        except (OSError, KeyError, ValueError, IndexError) as exc:
            parts.append(note(f"trial {number}: looked_at.npz could not be read ({esc(type(exc).__name__)}: "
                              f"{esc(exc)})", warn=True))
            continue
        metrics = load_json(run.trial_dir(number) / METRICS_FILE) or {}
        used_fraction = metrics.get("used_fraction") if isinstance(metrics, dict) else None
        sees = f"sees {esc(fmt(row[INPUT_COLUMN]))} px · " if pd.notna(row.get(INPUT_COLUMN)) else ""
        head = (f"<b>trial {number}</b> · {esc(row['strategy'])} · {sees}"
                + " · ".join(f"{esc(o)} {esc(fmt(row[o]))}" for o in run.objectives)
                + f" · used {all_used:.0%} of the pixels over {len(used)} images"
                + (f" (metrics.json used_fraction {esc(fmt(used_fraction))})"
                   if isinstance(used_fraction, (int, float)) else ""))
        parts.append(f'<div class="trialimgs"><p>{head}</p><div class="cells">{"".join(cells)}</div></div>')
    if absent:
        parts.append(note("No looked_at.npz for trial(s) " + esc(", ".join(absent)) + "."))
    return "\n".join(parts)


def _pick(run: RunRecord, how: str, budget: float | None) -> tuple[int | None, str]:
    """(trial number, "") or (None, why not); the usual reasons are checked here, without raising."""
    if not run.eligible().any():
        return None, "no complete, feasible trial yet"
    if "accuracy" not in run.objectives:
        return None, "accuracy is not among the objectives"
    if how == "knee":
        if len(run.objectives) < 2:
            return None, "the knee needs accuracy and a cost objective"
        return pick_trial(run.trials, run.directions, "knee"), ""
    if how == "accuracy":
        return most_accurate(run.trials, run.directions), ""
    if budget is None:
        return None, "no FLOPs budget (constraints.max_flops) is set in space.yaml"
    if "flops" not in run.trials.columns:
        return None, "the trials table has no flops column"
    number = most_accurate_within_budget(run.trials, budget, run.directions)
    return number, "" if number is not None else f"no complete, feasible trial has FLOPs ≤ {fmt(budget)}"


def _flops_budget(run: RunRecord) -> float | None:
    return run.space.limit("flops")


def front_picks(run: RunRecord) -> dict[str, int]:
    """The picks marked on the front: the knee and, where the run has a FLOPs budget, the most accurate
    trial within it (the same trials the pick box names)."""
    picks = {}
    for how in ("knee", "budget"):
        number, _ = _pick(run, how, _flops_budget(run))
        if number is not None:
            picks[how] = int(number)
    return picks


def picks_section(run: RunRecord) -> str:
    budget = _flops_budget(run)
    where = Path(run.path).resolve()  # the command is pasted later, from anywhere: an absolute path
    knee_words = ("where the accuracy/FLOPs trade-off bends most (largest distance from the line joining the "
                  "front's extremes, log FLOPs, normalised)") if len(run.objectives) <= 2 else (
        f"where the trade-off of all {len(run.objectives)} objectives bends most (largest distance from the "
        "hyperplane through the front's extremes, costs that span decades on a log scale, normalised)")
    choices = [
        ("knee", "Knee of the front", knee_words),
        ("accuracy", "Most accurate", "the best validation accuracy of any complete, feasible trial"),
        ("budget", "Most accurate within the FLOPs budget",
         f"the best accuracy with FLOPs ≤ {esc(fmt(budget))}" if budget is not None else "needs constraints.max_flops"),
    ]
    cards = []
    for how, title, why in choices:
        number, reason = _pick(run, how, budget)
        if number is None:
            cards.append(f'<div class="pick"><h3>{title}</h3>{note(why)}{note(esc(reason), warn=True)}</div>')
            continue
        row = run.trials[run.trials["number"] == number].iloc[0]
        figures = " · ".join(f"{esc(o)} {esc(fmt(row[o]))}" for o in run.objectives)
        command = spell("export", where, "--trial", str(number))
        cards.append(
            f'<div class="pick"><h3>{title}: trial {number} ({esc(row["strategy"])})</h3>{note(why)}'
            f"<p>{figures}</p><code class=\"cmd\" id=\"cmd-{how}\">{esc(command)}</code>"
            f'<button class="copy" data-target="cmd-{how}">copy command</button></div>'
        )
    return note("Three ways to choose one model, each with the command that exports it (to "
                "<code>export/trial-N</code> in the run directory).") + (
        '<div class="picks">' + "".join(cards) + "</div>")


def trials_table_section(run: RunRecord, pareto: pd.Series) -> str:
    trials = run.trials.assign(_front=pareto.to_numpy())
    first = run.objectives[0]
    front = trials[trials["_front"]].sort_values(first, ascending=run.directions[first] == "minimize", kind="stable")
    rest = trials[~trials["_front"]].sort_values("number", kind="stable")
    ordered = pd.concat([front, rest])
    fixed = ["number", "state", "feasible", "strategy", INPUT_COLUMN, *run.objectives, "test_accuracy", "k_final",
             "params_count", "duration_s", ATTR_NODE, "datetime_start"]
    # the node column only where trials ran on Ray (in-process runs leave it empty)
    present = [c for c in fixed if c in trials.columns and (c != ATTR_NODE or trials[c].notna().any())]
    columns = list(dict.fromkeys(present + config_columns(trials)))
    if "error" in trials.columns:
        columns.append("error")
    head = "<th>front</th>" + "".join(f"<th>{esc(c.removeprefix('config.'))}</th>" for c in columns)
    body = []
    for _, row in ordered.iterrows():
        cells = [f'<td data-v="{int(row["_front"])}">{"★" if row["_front"] else ""}</td>']
        for column in columns:
            key, text = _cell(row[column], column)
            title = ""
            if column == "error" and len(text) > ERROR_CHARS:
                title, text = f' title="{esc(text)}"', text[:ERROR_CHARS] + "…"
            cells.append(f'<td data-v="{esc(key)}"{title}>{esc(text)}</td>')
        body.append(f'<tr class="{"front" if row["_front"] else ""}">' + "".join(cells) + "</tr>")
    return (note(f"All {len(trials)} trials, those on the Pareto front (★) first. Click a header to sort.")
            + '<div class="tablewrap"><table class="sortable" id="trials"><thead><tr>' + head + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")


def render(run: RunRecord) -> str:
    """The whole report for a loaded run, as one HTML string."""
    page = Page()
    pareto = run.pareto()
    colours = figures.strategy_colours(run.trials["strategy"])
    counts = state_counts(run, pareto)
    page.add("summary", "Summary", summary_section(run, counts))
    page.add("pareto", "Pareto front", pareto_section(page, run, colours, pareto))
    page.add("hypervolume", "Hypervolume", hypervolume_section(page, run))
    page.add("strategies", "Fronts per strategy", strategy_section(page, run, colours))
    page.add("parameters", "Parameters", parameters_section(page, run))
    page.add("curves", "Learning curves", curves_section(page, run, pareto))
    page.add("looked-at", "What the models looked at", looked_at_section(run, pareto))
    page.add("pick", "Pick a model", picks_section(run))
    page.add("trials", "Trials", trials_table_section(run, pareto))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"cellsparse report: {esc(run.name)}"
    subtitle = (f"{counts['complete']} complete of {counts['total']} trials · {counts['on the Pareto front']} on the "
                f"Pareto front · generated {when}")
    return page.render(title, subtitle)
