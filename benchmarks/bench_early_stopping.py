"""Early stopping: hypervolume against wall-clock time, this project against plain Ray Tune + OptunaSearch.

    python benchmarks/bench_early_stopping.py                        # 5 seeds x 4 variants x 40 trials (hours on 2 cores)
    python benchmarks/bench_early_stopping.py --seeds 2 --trials 16 --epochs 6
    python benchmarks/bench_early_stopping.py --same-time 3           # each variant gets plain's wall-clock
    python benchmarks/bench_early_stopping.py --from-json docs/bench_early_stopping.json   # re-render only

The fixed task is the default synthetic space (``search_space/cells.yaml``: its data, strategies,
ranges and FLOPs budget) with ``--trials`` trials of ``--epochs`` epochs, TPE seeded per run, the ray
backend with the space's ``max_concurrent`` trials at once and one CPU each. Four variants, each run
once per seed:

(a) ``plain``: plain Ray Tune + OptunaSearch, written only against Ray's and Optuna's public APIs
    (:func:`plain_ray_tune`, the lines a user would write): the same search space (the project's
    define-by-run sampler function) and the same training function, no scheduler, no budget check
    before training;
(b) ``none``: this project, ``early_stopping: none``;
(c) ``asha``: this project with Ray Tune's own ASHA on accuracy alone;
(d) ``moasha``: this project with multi-objective successive halving.

The reference point is fixed before any run: accuracy 0 and FLOPs = the space's ``max_flops``, and
hypervolume is taken over complete, feasible trials only (a stopped trial never counts). For each
seed, "time to (a)'s hypervolume" is when a variant's hypervolume first reaches what (a) reached by
its end, divided by (a)'s wall-clock; the target is moasha at or below 2/3 (1.5x faster), mean over
seeds with the spread. The figure of hypervolume against time is written to
``docs/bench_early_stopping.svg``; raw figures to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from cellsparse.rundir import eligible_mask, read_trials  # noqa: E402

VARIANTS = ("plain", "none", "asha", "moasha")
EARLY_STOPPING = {"none": "none", "asha": "{name: asha, grace_epochs: 1, reduction_factor: 3}",
                  "moasha": "{name: moasha, grace_epochs: 1, reduction_factor: 3}"}
SPACE = ROOT / "search_space" / "cells.yaml"
SVG = ROOT / "docs" / "bench_early_stopping.svg"
TARGET = 2 / 3


def derived_space(workdir: Path, variant: str, seed: int, trials: int, epochs: int, timeout_s: float | None = None) -> Path:
    """cells.yaml with the run's trials, epochs, seed, early stopping and (``--same-time``) time budget;
    nothing else changes."""
    import yaml

    space = yaml.safe_load(SPACE.read_text())
    space["name"] = f"es_{variant}_{seed}"
    space["seed"] = seed
    space["training"]["epochs"] = epochs
    search = space["search"]
    search.update({"trials": trials, "backend": "ray", "sampler": {"name": "tpe", "seed": seed}})
    search.pop("timeout_s", None)
    if timeout_s is not None:
        search["timeout_s"] = float(timeout_s)
    if variant != "plain":
        search["early_stopping"] = yaml.safe_load(EARLY_STOPPING[variant])
    path = workdir / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


class DefineByRun:
    """The search space as Optuna's define-by-run function (module level: OptunaSearch pickles it)."""

    def __init__(self, space) -> None:  # noqa: ANN001
        self.space = space

    def __call__(self, trial):  # noqa: ANN001, ANN204
        from search_space.sampling import suggest_config

        return suggest_config(trial, self.space)


def plain_ray_tune(space_file: Path, out: Path) -> list[dict]:
    """Variant (a): what a user writes with Ray Tune and Optuna alone. Returns one row per finished
    trial: accuracy, flops, the seconds from the start to its end, and whether it finished."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from runner.data import load_dataset
    from runner.engine.trial import run_trial
    from search_space.spec import load_space

    space = load_space(space_file)
    start = time.time()

    def trainable(config: dict, data: object) -> None:
        trial_dir = Path(tempfile.mkdtemp(dir=out))
        metrics = run_trial(config, data=data, trial_dir=trial_dir, objectives=space.objective_names, seed=space.seed,
                            report=lambda row: tune.report({"accuracy": row["accuracy"], "flops": row["flops"]}))
        tune.report({"accuracy": metrics["accuracy"], "flops": metrics["flops"], "done_at": time.time() - start})

    searcher = OptunaSearch(space=DefineByRun(space), metric=["accuracy", "flops"],
                            mode=["max", "min"], sampler=optuna.samplers.TPESampler(seed=space.seed))
    tuner = tune.Tuner(
        # The data loaded once and shared through Ray's object store, as Tune's docs advise (and as the
        # project's backend loads it once per worker): neither side pays for it per trial.
        tune.with_resources(tune.with_parameters(trainable, data=load_dataset(**space.data.loader_kwargs(), seed=space.seed)),
                            {"cpu": space.search.cpus_per_trial}),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, space.search.max_concurrent),
                                    num_samples=space.search.trials),
        run_config=tune.RunConfig(storage_path=str(out), name="plain", verbose=0),
    )
    results = tuner.fit()
    ray.shutdown()
    return [{"accuracy": r.metrics.get("accuracy"), "flops": r.metrics.get("flops"), "done_at": r.metrics.get("done_at")}
            for r in results if r.metrics and r.metrics.get("done_at") is not None]


def project_run(space_file: Path, out: Path) -> list[dict]:
    """Variants (b)-(d): the project's own CLI; rows from trials.csv (COMPLETE, feasible trials)."""
    import pandas as pd

    subprocess.run([sys.executable, "-m", "runner.search", "--space", str(space_file), "--out", str(out)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    trials = read_trials(out / "trials.csv")
    start = pd.to_datetime(trials["datetime_start"]).min()
    ok = eligible_mask(trials, ["accuracy", "flops"])
    done = (pd.to_datetime(trials["datetime_complete"]) - start).dt.total_seconds()
    return [{"accuracy": float(a), "flops": float(f), "done_at": float(t)}
            for a, f, t in zip(trials["accuracy"][ok], trials["flops"][ok], done[ok], strict=True)]


def hv_curve(rows: list[dict], max_flops: float) -> list[tuple[float, float]]:
    """(seconds, normalised hypervolume) after each finished trial, in completion order; the reference
    is accuracy 0 and FLOPs = max_flops, normalised by ``cellsparse.pareto.normalized_hypervolume`` (the
    box up to the ideal accuracy 1 at 0 FLOPs), as the report normalises it."""
    from cellsparse.objective_info import ideal_point
    from cellsparse.pareto import normalized_hypervolume

    rows = sorted((r for r in rows if r["accuracy"] is not None and math.isfinite(r["accuracy"])), key=lambda r: r["done_at"])
    curve, seen = [], []
    for row in rows:
        seen.append([row["accuracy"], row["flops"]])
        curve.append((row["done_at"], normalized_hypervolume(seen, ["maximize", "minimize"], [0.0, max_flops],
                                                             ideal_point(["accuracy", "flops"]))))
    return curve


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """Seconds until the curve first reaches ``target`` (inf when it never does)."""
    return next((t for t, hv in curve if hv >= target - 1e-12), math.inf)


def summarise(runs: dict[str, dict[int, list[tuple[float, float]]]]) -> dict[str, dict]:
    """Per variant: final hypervolume and time to (a)'s final hypervolume over (a)'s wall-clock, per seed."""
    out: dict[str, dict] = {}
    for variant, by_seed in runs.items():
        finals, ratios = [], []
        for seed, curve in by_seed.items():
            plain = runs["plain"].get(seed)
            finals.append(curve[-1][1] if curve else 0.0)
            if plain:
                ratios.append(time_to_reach(curve, plain[-1][1]) / plain[-1][0])
        out[variant] = {"final_hv": finals, "time_ratio": ratios}
    return out


def mean_spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(finite) < len(values):
        return f"not reached in {len(values) - len(finite)} of {len(values)} seeds"
    return f"{statistics.mean(finite):.3f}" + (f" ± {statistics.stdev(finite):.3f}" if len(finite) > 1 else "")


def in_short(summary: dict[str, dict]) -> str:
    """The verdict on the target, from the figures."""
    ratios = summary.get("moasha", {}).get("time_ratio", [])
    if not ratios:
        return ("**In short:** moasha was not run, so the target (plain Ray Tune's final hypervolume in 2/3 of its "
                "time) is untested.")
    finite = [r for r in ratios if math.isfinite(r)]
    if len(finite) < len(ratios):
        missed = len(ratios) - len(finite)
        verdict = f"moasha did not reach plain Ray Tune + OptunaSearch's final hypervolume in {missed} of {len(ratios)} seeds"
    else:
        mean = statistics.mean(finite)
        verdict = (f"moasha reached plain Ray Tune + OptunaSearch's final hypervolume in {mean:.2f}x its wall-clock on average "
                   f"({'meets' if mean <= TARGET else 'misses'} the 2/3 target, {1 / mean:.2f}x faster)")
    return f"**In short:** {verdict}."


def svg(runs: dict[str, dict[int, list[tuple[float, float]]]], path: Path) -> None:
    """Hypervolume against wall-clock minutes, one line per variant and seed (a hand-written SVG: no plotting
    library is a dependency)."""
    colours = {"plain": "#7f7f7f", "none": "#1f77b4", "asha": "#ff7f0e", "moasha": "#2ca02c"}
    curves = [(v, c) for v, by_seed in runs.items() for c in by_seed.values() if c]
    t_max = max((c[-1][0] for _, c in curves), default=1.0) / 60 or 1.0
    hv_max = max((hv for _, c in curves for _, hv in c), default=1.0) or 1.0
    w, h, pad = 640, 400, 50

    def xy(t: float, hv: float) -> str:
        return f"{pad + (w - 2 * pad) * (t / 60) / t_max:.1f},{h - pad - (h - 2 * pad) * hv / hv_max:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">wall-clock (minutes, 0 to {t_max:.1f})</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
             f'hypervolume (0 to {hv_max:.3f})</text>']
    for variant, curve in curves:
        steps, last = [xy(0.0, 0.0)], 0.0
        for t, hv in curve:  # a step line: hypervolume holds until the next trial finishes
            steps += [xy(t, last), xy(t, hv)]
            last = hv
        parts.append(f'<polyline fill="none" stroke="{colours.get(variant, "#000")}" stroke-width="1.5" '
                     f'points="{" ".join(steps)}"/>')
    for i, (variant, colour) in enumerate(colours.items()):
        if variant in runs:
            parts.append(f'<text x="{w - pad - 90}" y="{pad + 16 * i}" fill="{colour}">{variant}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def render(raw: dict, command: str, write: bool) -> None:
    runs = {v: {int(s): [tuple(p) for p in c] for s, c in by_seed.items()} for v, by_seed in raw["curves"].items()}
    summary = summarise(runs)
    rows = [[v, len(runs[v]), mean_spread(summary[v]["final_hv"]),
             "1 (by definition)" if v == "plain" else mean_spread(summary[v]["time_ratio"])] for v in runs]
    table = markdown_table(["variant", "seeds", "final hypervolume (mean ± sd)", "time to plain's final HV / plain's time"], rows)
    short = in_short(summary)
    print(short + "\n\n" + table)
    if write:
        svg(runs, SVG)
        same_time = int(raw.get("same_time") or 0)
        budget = (f"; plain Ray Tune runs {raw['trials']} trials, and each project variant up to {same_time}x as many "
                  "within plain's wall-clock of the same seed (early stopping spends what it saves on more trials)"
                  if same_time else "; every variant runs the same number of trials")
        body = (f"{stamp(raw.get('command') or command)}\n\n{short}\n\nThe default synthetic space (`search_space/cells.yaml`) "
                f"with trials of {raw['epochs']} epochs, TPE, {raw['max_concurrent']} trials at once on the ray "
                f"backend, seeds {', '.join(map(str, raw['seeds']))}{budget}; reference point accuracy 0 and FLOPs = max_flops, "
                f"hypervolume over complete, feasible trials only, normalised by that box. Hypervolume against time: "
                f"`docs/{SVG.name}`." + (f" {raw['note']}" if raw.get("note") else "") + f"\n\n{table}\n")
        write_section("early_stopping", "Early stopping: hypervolume against wall-clock", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--same-time", type=int, default=0, metavar="F",
                        help="give each project variant F times the trials and plain's wall-clock as its time budget "
                        "(early stopping spends saved time on more trials); 0: the same trial count for all")
    parser.add_argument("--reuse", type=Path, metavar="JSON",
                        help="take the curves of the variants and seeds this saved run holds instead of running them")
    parser.add_argument("--json", type=Path, help="save the raw curves here as each run finishes")
    parser.add_argument("--from-json", type=Path, help="render saved curves; run nothing")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    command = own_command("bench_early_stopping.py")
    if args.from_json:
        render(json.loads(args.from_json.read_text()), command, not args.no_write)
        return
    import yaml

    space = yaml.safe_load(SPACE.read_text())
    raw = {"command": command, "same_time": args.same_time, "trials": args.trials, "epochs": args.epochs,
           "seeds": list(range(args.seeds)),
           "max_concurrent": space["search"]["max_concurrent"], "curves": {v: {} for v in args.variants}}
    reused = json.loads(args.reuse.read_text())["curves"] if args.reuse else {}
    max_flops = float(space["constraints"]["max_flops"])
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for variant in args.variants:
                if str(seed) in reused.get(variant, {}):
                    raw["curves"][variant][seed] = [tuple(p) for p in reused[variant][str(seed)]]
                    print(f"seed {seed} {variant}: reused from {args.reuse}", flush=True)
                    continue
                plain = raw["curves"].get("plain", {}).get(seed)
                same_time = args.same_time and variant != "plain" and plain
                space_file = derived_space(Path(tmp), variant, seed, args.trials * (args.same_time if same_time else 1),
                                           args.epochs, timeout_s=plain[-1][0] if same_time else None)
                out = Path(tmp) / f"run_{variant}_{seed}"
                out.mkdir()
                began = time.perf_counter()
                rows = plain_ray_tune(space_file, out) if variant == "plain" else project_run(space_file, out)
                raw["curves"][variant][seed] = hv_curve(rows, max_flops)
                final = raw["curves"][variant][seed][-1][1] if rows else 0.0
                print(f"seed {seed} {variant}: {len(rows)} complete trials, final HV {final:.4f}, "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(raw, indent=1))
    render(raw, command, not args.no_write)


if __name__ == "__main__":
    main()
