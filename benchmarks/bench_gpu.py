"""GPU: the real-cells search on a CUDA device, trials packed onto it with fractional GPUs, and the
exported models' throughput there.

    PBC28_NPZ=/path/to/pbc28.npz python benchmarks/bench_gpu.py                 # ~6 min on one H200
    python benchmarks/bench_gpu.py --data pbc28.npz --json gpu.json --search-limit-s 300
    python benchmarks/bench_gpu.py --from-json docs/bench_gpu.json --cpu-run runs/pbc28   # re-render only

Where torch sees no CUDA device it says so and exits 0 without writing anything. Otherwise, on the
first GPU, each part a ray search (``python -m runner.search``, the project's own CLI):

1. **The real-cells search**: ``search_space/blood_cells.yaml`` as committed (24 trials, 15 epochs,
   TPE seed 0) with P trials sharing the GPU (``--gpus-per-trial 1/P --max-concurrent P``) and a
   safety stop of ``--search-limit-s``: trials per hour, the Pareto front and the test accuracy of
   its models.
2. **Exported-model throughput**: the knee of that front and its most accurate dense model are
   exported with ``runner.export`` (.pt2, parity-checked against eager on the CPU) and run through
   ``runner.predict``'s loader on CUDA, as a deployment would: images/s at each batch size, the copy
   of the images from host memory and of the logits back included; torch eager on CUDA beside it.
3. **Packing**: one fixed small CNN (pbc28, ``--packing-epochs`` epochs) trained ``--packing-trials``
   times with 1 trial on the GPU and with several at once: trials per hour and the speed-up that
   fractional GPUs buy for models this small.

The raw figures go to ``--json`` as they are measured (so a part that fails keeps the ones before
it); the section "gpu" of docs/benchmarks.md is rendered from them. ``--from-json`` renders from a
saved file, and ``--cpu-run`` adds a per-strategy comparison with a CPU run of the same space.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import add_pbc28_argument, gpu_skip_reason, machine_record, markdown_table, own_command, write_section  # noqa: E402
from _front import FRONT_HEADER, best_in, describe, eligible, front_rows, pct, run_search  # noqa: E402

from cellsparse.rundir import read_trials  # noqa: E402

SPACE = ROOT / "search_space" / "blood_cells.yaml"
PACKING_CONFIG = {"width": 16, "stages": 3, "blocks_per_stage": 1, "stem_stride": 2}  # the 5 MFLOPs CNN
BATCH_SIZES = (1, 256, 4096)
TARGET = 10_000  # cells per second, an imaging flow cytometer's rate


# ---------------------------------------------------------------------------------------------
# Measuring


def derived_space(tmp: Path, name: str, data: Path, edit: dict[str, Any]) -> Path:
    """blood_cells.yaml with ``data.path`` set to ``data`` and the top-level sections in ``edit`` merged in."""
    raw = yaml.safe_load(SPACE.read_text())
    raw["name"] = name
    raw["data"]["path"] = str(data)
    for section, values in edit.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_table(run_dir: Path) -> list[dict[str, Any]]:
    """trials.csv as records, with the share of the image each model used (from metrics.json)."""
    table = read_trials(run_dir / "trials.csv")
    records = json.loads(table.to_json(orient="records", double_precision=15))
    for row in records:
        try:
            metrics = json.loads((run_dir / "trials" / str(int(row["number"])) / "metrics.json").read_text())
            row["used_fraction"] = metrics.get("used_fraction")
        except (OSError, ValueError):
            row["used_fraction"] = None
    return records


def search_figures(run_dir: Path, wall_s: float) -> dict[str, Any]:
    table = pd.DataFrame(trial_table(run_dir))
    complete = table[table["state"] == "COMPLETE"]
    durations = pd.to_numeric(complete["duration_s"], errors="coerce").dropna()
    # From the first trial's start to the last one's end: the rate once Ray is up (start-up left out).
    starts = pd.to_datetime(table["datetime_start"], errors="coerce", utc=True).dropna()
    ends = pd.to_datetime(table["datetime_complete"], errors="coerce", utc=True).dropna()
    span_s = (ends.max() - starts.min()).total_seconds() if len(starts) and len(ends) else None
    return {
        "wall_s": wall_s,
        "span_s": span_s,
        "states": table["state"].value_counts().to_dict(),
        "complete": len(complete),
        "trials_per_hour": 3600 * len(complete) / wall_s if wall_s else None,
        "steady_trials_per_hour": 3600 * len(complete) / span_s if span_s else None,
        "mean_trial_s": float(durations.mean()) if len(durations) else None,
        "trials": json.loads(table.to_json(orient="records", double_precision=15)),
    }


def search_flags(per_gpu: int, cpus: int, gpu: bool) -> dict[str, object]:
    """``per_gpu`` trials at once, each on 1/per_gpu of the GPU (``gpu=False``: on the CPUs alone, to check the script)."""
    return {"--gpus-per-trial": 1 / per_gpu if gpu else None, "--max-concurrent": per_gpu, "--cpus-per-trial": cpus}


def run_real_search(tmp: Path, data: Path, *, per_gpu: int, cpus: int, limit_s: float, gpu: bool = True,
                    edit: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """blood_cells.yaml as committed (plus ``edit``), with a safety stop of ``limit_s``."""
    space = derived_space(tmp, "pbc28_gpu", data, {"search": {"timeout_s": limit_s}, **(edit or {})})
    out = tmp / "runs" / "pbc28_gpu"
    flags = search_flags(per_gpu, cpus, gpu)
    command, wall = run_search(str(space), out, flags)
    figures = search_figures(out, wall)
    figures.update(per_gpu=per_gpu, cpus_per_trial=cpus, limit_s=limit_s,
                   command=command.replace(str(space), "<blood_cells.yaml with the data path and time limit set>")
                   .replace(str(tmp), "<tmp>"))
    return out, figures


def run_packing(tmp: Path, data: Path, *, per_gpu: int, cpus: int, trials: int, epochs: int,
                gpu: bool = True) -> dict[str, Any]:
    """``trials`` trainings of one fixed CNN config, ``per_gpu`` of them sharing the GPU at a time."""
    edit = {
        "training": {"epochs": epochs, "lr": 0.004},
        "search": {"trials": trials, "sampler": {"name": "random", "seed": 0}, "timeout_s": None},
        "space": {"shared": {}, "strategy": {"dense_cnn": dict(PACKING_CONFIG)}},
    }
    space = derived_space(tmp, f"packing{per_gpu}", data, edit)
    out = tmp / "runs" / f"packing{per_gpu}"
    flags = search_flags(per_gpu, cpus, gpu)
    _, wall = run_search(str(space), out, flags)
    figures = search_figures(out, wall)
    accuracy = pd.to_numeric(pd.DataFrame(figures.pop("trials"))["accuracy"], errors="coerce")
    figures.update(per_gpu=per_gpu, trials_asked=trials, epochs=epochs, mean_val_accuracy=float(accuracy.mean()))
    return figures


def throughput(run_dir: Path, tmp: Path, batch_sizes: tuple[int, ...], device: str = "cuda") -> list[dict[str, Any]]:
    """Images/s on ``device`` of the run's knee model and its most accurate dense model, exported and eager."""
    from bench_export import pick_models

    from runner.engine.checkpoint import load_trained
    from runner.export import export_run
    from runner.export.parity import time_batches
    from runner.predict import load_runtime

    rows = []
    for role, number in pick_models(run_dir):
        result = export_run(run_dir, trial=number, formats=("pt2",), out=tmp / f"export{number}", measure=False,
                            log=lambda _line: None)
        trained = load_trained(run_dir / "trials" / str(number))
        model = trained.model.eval().to(device)

        def eager(x: Any, model: torch.nn.Module = model) -> Any:
            with torch.no_grad():
                return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

        _, pt2 = load_runtime(result.out, result.card, "pt2", device)
        c, s = int(trained.meta["in_channels"]), int(trained.meta["image_size"])
        runtimes = (("exported .pt2 (runner.predict)", lambda pt2=pt2: pt2),
                    # a compiled runner keeps the first batch size it sees: one per batch size
                    ("exported .pt2, compiled (predict --compile)", lambda out=result.out, card=result.card:
                     load_runtime(out, card, "pt2", device, compiled=True)[1]),
                    ("torch eager", lambda eager=eager: eager))
        for runtime, make in runtimes:
            for batch in batch_sizes:
                run = make()
                x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(1)).numpy()
                best = min(time_batches(run, x, min_time_s=0.5, max_repeats=200) for _ in range(3))
                rows.append({"role": role, "trial": number, "strategy": trained.strategy,
                             "val_accuracy": trained.metrics.get("val_accuracy"),
                             "test_accuracy": trained.metrics.get("test_accuracy"),
                             "flops": trained.metrics.get("flops"), "runtime": runtime, "batch": batch,
                             "images_per_s": batch / best * 1e3})
    return rows


def measure(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_record()}
    cpus = args.cpus_per_trial or max(1, (os.cpu_count() or 1) // max(args.per_gpu, *args.packing))
    with tempfile.TemporaryDirectory(prefix="cellsparse-gpu-") as name:
        tmp = Path(name)
        start = time.perf_counter()
        run_dir, results["search"] = run_real_search(tmp, args.data, per_gpu=args.per_gpu, cpus=cpus,
                                                     limit_s=args.search_limit_s)
        save(results)
        try:
            results["throughput"] = throughput(run_dir, tmp, BATCH_SIZES)
        except Exception as err:  # noqa: BLE001 - keep the search's figures; say what failed
            results["throughput_error"] = f"{type(err).__name__}: {err}"
        save(results)
        results["packing"] = []
        for per_gpu in args.packing:
            results["packing"].append(run_packing(tmp, args.data, per_gpu=per_gpu, cpus=cpus,
                                                  trials=args.packing_trials, epochs=args.packing_epochs))
            save(results)
        results["total_s"] = time.perf_counter() - start
    save(results)
    return results


# ---------------------------------------------------------------------------------------------
# Rendering


def _search_text(search: dict[str, Any]) -> str:
    table = pd.DataFrame(search["trials"])
    frame = eligible(table)
    states = ", ".join(f"{k} {v}" for k, v in search["states"].items())
    stopped = int(table.get("error", pd.Series(dtype=str)).astype(str).str.startswith("interrupted").sum())
    if stopped:
        states += f"; the {stopped} FAIL trials still running at the safety stop were recorded as interrupted"
    text = (f"Command: `{search['command']}`, {search['per_gpu']} trials sharing the GPU "
            f"({1 / search['per_gpu']:.3g} GPU and {search['cpus_per_trial']} CPUs each), TPE sampler seed 0 and "
            f"trial seeds 0 + trial number as in the space file, a safety stop after "
            f"{search['limit_s']:.0f} s. {len(table)} trials ({states}) in {search['wall_s'] / 60:.1f} min of wall "
            f"time, Ray start-up included: **{search['trials_per_hour']:.0f} trials per hour** "
            f"({search['steady_trials_per_hour']:.0f} from the first trial's start to the last one's end), each trial "
            f"{search['mean_trial_s']:.0f} s on average.")
    if frame.empty:
        return text + " No complete, feasible trial."
    return (text + "\n\nPareto front (validation accuracy against FLOPs; test accuracy beside, never used to choose):\n\n"
            + markdown_table(FRONT_HEADER, front_rows(None, frame))
            + f"\n\nMost accurate (by validation) within 10 MFLOPs: {describe(best_in(frame, 10.0))}.")


def _same_configs(cpu: pd.DataFrame, gpu: pd.DataFrame) -> pd.DataFrame:
    """Trials both runs completed with the same config (the seeded sampler's first draws agree), joined on number."""
    both = cpu[cpu["state"] == "COMPLETE"].merge(gpu[gpu["state"] == "COMPLETE"], on="number", suffixes=("_cpu", "_gpu"))
    keys = sorted({c[: -len("_cpu")] for c in both.columns if c.startswith("config.") and c.endswith("_cpu")}
                  & {c[: -len("_gpu")] for c in both.columns if c.startswith("config.") and c.endswith("_gpu")})

    def equal(a: Any, b: Any) -> bool:
        if pd.isna(a) or pd.isna(b):
            return bool(pd.isna(a) and pd.isna(b))
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6)  # the saved figures keep 10 significant digits
        except (TypeError, ValueError):
            return str(a) == str(b)

    def same(row: pd.Series) -> bool:
        return all(equal(row[f"{k}_cpu"], row[f"{k}_gpu"]) for k in keys)

    return both[both.apply(same, axis=1)] if len(both) else both


def _cpu_comparison(search: dict[str, Any], cpu_run: Path) -> str:
    cpu = read_trials(cpu_run / "trials.csv")
    gpu = pd.DataFrame(search["trials"])
    info = json.loads((cpu_run / "run.json").read_text()) if (cpu_run / "run.json").exists() else {}
    cpu_done = int((cpu["state"] == "COMPLETE").sum())
    cpu_wall = float(info.get("wall_time_s") or 0)
    rate = f"{3600 * cpu_done / cpu_wall:.0f} trials per hour" if cpu_wall else "its rate unknown"
    machine = info.get("machine") or {}
    text = (f"Against the CPU run of the same space (`{cpu_run.name}`, the real-cells section: {cpu_done} complete trials "
            f"in {cpu_wall / 60:.0f} min, {rate}, 2 trials at a time on 1 thread each of {machine.get('cpus', '?')} "
            f"CPUs): {search['trials_per_hour'] / (3600 * cpu_done / cpu_wall):.0f}x the trials per hour."
            if cpu_wall and cpu_done else f"Against the CPU run `{cpu_run.name}` (not finished):")
    matched = _same_configs(cpu, gpu)
    if matched.empty:
        return text
    rows = []
    for _, r in matched.sort_values("number").iterrows():
        c, g = float(r["duration_s_cpu"]), float(r["duration_s_gpu"])
        rows.append([int(r["number"]), r["strategy_cpu"], f"{float(r['flops_cpu']) / 1e6:.2f}", f"{c:.0f}", f"{g:.0f}",
                     f"{c / g:.1f}x", pct(r["accuracy_cpu"]), pct(r["accuracy_gpu"]),
                     pct(r["test_accuracy_cpu"]), pct(r["test_accuracy_gpu"])])
    ratios = matched["duration_s_cpu"].astype(float) / matched["duration_s_gpu"].astype(float)
    gaps = (matched["test_accuracy_cpu"].astype(float) - matched["test_accuracy_gpu"].astype(float)).abs() * 100
    widest = matched.loc[gaps.idxmax()]
    return (text + f" The two searches drew the same configs for {len(matched)} trials (the seeded sampler's first "
            f"draws), so those compare like for like: a trial took {ratios.min():.0f}-{ratios.max():.0f}x less time "
            f"on the GPU (8 sharing it) than on one CPU thread, and its test accuracy differed by at most "
            f"{gaps.max():.2f} points (trial {int(widest['number'])}, {widest['strategy_cpu']}; median "
            f"{gaps.median():.2f}): the same seed, other arithmetic, and a model that selects pixels can follow "
            "another path once one selection differs:\n\n"
            + markdown_table(["trial", "strategy", "MFLOPs", "CPU s", "GPU s", "CPU / GPU", "val acc CPU", "val acc GPU",
                              "test acc CPU", "test acc GPU"], rows))


def _throughput_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No throughput figures."
    table = []
    for r in rows:
        table.append([r["role"], r["trial"], r["strategy"], pct(r["val_accuracy"]), pct(r["test_accuracy"]),
                      f"{r['flops'] / 1e6:.2f}", r["runtime"], r["batch"], f"{r['images_per_s']:,.0f}"])
    best = {}
    for r in rows:
        key = (r["role"], r["trial"])
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    words = "; ".join(f"the {r['role']} model ({r['strategy']}, {r['flops'] / 1e6:.2f} MFLOPs) {r['images_per_s']:,.0f} "
                      f"images/s ({r['images_per_s'] / TARGET:.1f}x the {TARGET:,} cells/s of an imaging flow cytometer) "
                      f"with {r['runtime']} at batch {r['batch']}" for r in best.values())
    batch1 = [r for r in rows if r["batch"] == 1 and r["runtime"].startswith("exported")]
    one = "; ".join(f"{r['role']} {r['images_per_s']:,.0f} images/s" for r in batch1)
    return (markdown_table(["model", "trial", "strategy", "val acc", "test acc", "MFLOPs", "runtime", "batch", "images/s"], table)
            + f"\n\nBest figures: {words}. One image at a time (batch 1, exported): {one}: at batch 1 the GPU waits on "
            "kernel launches and copies, not arithmetic.")


def _packing_text(packing: list[dict[str, Any]]) -> str:
    if not packing:
        return "No packing figures."
    base = packing[0]
    rows = [[p["per_gpu"], f"{1 / p['per_gpu']:.3g}", p["complete"], f"{p['wall_s']:.0f}", f"{p['span_s']:.0f}",
             f"{p['mean_trial_s']:.1f}", f"{p['steady_trials_per_hour']:.0f}",
             f"{p['steady_trials_per_hour'] / base['steady_trials_per_hour']:.2f}x", pct(p["mean_val_accuracy"])]
            for p in packing]
    cfg = ", ".join(f"{k} {v}" for k, v in PACKING_CONFIG.items())
    return (f"The same dense_cnn ({cfg}; 5.2 MFLOPs) trained {base['trials_asked']} times on pbc28 for "
            f"{base['epochs']} epochs (a space that holds only this config; trial n trains with seed n, so both "
            "settings train the same models up to the GPU's non-deterministic kernels), with 1 trial on the GPU at a "
            f"time and with several sharing it. Trials this short ({base['mean_trial_s']:.1f} s alone on the GPU) spend "
            "much of their time outside the GPU (process hand-off, data loading, evaluation), which packing overlaps. "
            "Wall s counts Ray's start-up and shut-down; trial span s runs from the first trial's start to the "
            "last one's end, and trials per hour are taken over it, so the comparison is of the trials alone.\n\n"
            + markdown_table(["trials per GPU", "GPU per trial", "complete", "wall s", "trial span s", "s per trial",
                              "trials per hour", "vs 1 per GPU", "mean val acc"], rows))


def in_short(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["search"]
    parts = [f"**In short:** on one {m['gpu']}, the real-cells search ran {s['trials_per_hour']:.0f} trials per hour "
             f"with {s['per_gpu']} trials sharing the GPU"]
    packing = results.get("packing") or []
    if len(packing) > 1:
        best = max(packing[1:], key=lambda p: p["steady_trials_per_hour"])
        ratio = best["steady_trials_per_hour"] / packing[0]["steady_trials_per_hour"]
        verdict = "more" if ratio > 1.05 else "fewer" if ratio < 0.95 else "about as many"
        parts.append(f"packing {best['per_gpu']} small-CNN trials on the GPU finished {verdict} trials per hour than one "
                     f"at a time ({ratio:.2f}x)")
    rows = results.get("throughput") or []
    knee = [r for r in rows if r["role"] == "knee"]
    if knee:
        r = max(knee, key=lambda r: r["images_per_s"])
        parts.append(f"the front's knee model ({r['strategy']}, {r['flops'] / 1e6:.2f} MFLOPs) classifies "
                     f"{r['images_per_s']:,.0f} images/s ({r['runtime']}, batch {r['batch']})")
    return "; ".join(parts) + "."


def render(results: dict[str, Any], cpu_run: Path | None, command: str) -> str:
    m = results["machine"]
    head = (f"Machine: {m['gpu']} ({m['gpu_memory_gib']} GiB), {m['cpus']} CPUs; torch {m['torch']} (CUDA {m['cuda']}), "
            f"Python {m['python']}. Date: {m['date']}. Command: `{command}`.")
    parts = [head, in_short(results), "### The real-cells search on the GPU", _search_text(results["search"])]
    if cpu_run is not None and (cpu_run / "trials.csv").exists():
        parts.append(_cpu_comparison(results["search"], cpu_run))
    parts += ["### Exported-model throughput on the GPU",
              "Each figure is the best of 3 rounds, each the median of repeated calls after 2 warm-up calls, on "
              "random normal inputs of the model's shape (seed 1) held in host memory (k is fixed at inference, so the cost "
              "does not depend on pixel values); the host-to-GPU copy and the logits' copy back are included.",
              results.get("throughput_error", "") and f"Not measured: {results['throughput_error']}.",
              _throughput_text(results.get("throughput") or []),
              "### Several trials per GPU (fractional GPUs)",
              _packing_text(results.get("packing") or [])]
    return "\n\n".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pbc28_argument(parser)
    parser.add_argument("--per-gpu", type=int, default=8, help="trials sharing the GPU in the real-cells search (default 8)")
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs per trial (default: the CPUs / the most trials per GPU)")
    parser.add_argument("--search-limit-s", type=float, default=300, help="safety stop of the real-cells search (s)")
    parser.add_argument("--packing", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8],
                        help="trials per GPU to compare, first is the base (default 1,8)")
    parser.add_argument("--packing-trials", type=int, default=8)
    parser.add_argument("--packing-epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the raw figures here as they are measured")
    parser.add_argument("--from-json", type=Path, help="render the section from these saved figures; measure nothing")
    parser.add_argument("--cpu-run", type=Path, help="a CPU run of blood_cells.yaml to compare trial times with")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        command = results.get("command", "python benchmarks/bench_gpu.py")
    else:
        if skipped := gpu_skip_reason(args.data):
            print(skipped)
            return 0
        args.data = args.data.resolve()
        command = own_command("bench_gpu.py", argv)

        def save(results: dict[str, Any]) -> None:
            if args.json is not None:
                args.json.write_text(json.dumps({**results, "command": command}, indent=1, default=str))

        results = measure(args, save)
    body = render(results, args.cpu_run, command)
    print(body)
    if not args.no_write:
        write_section("gpu", "GPU: the real-cells search and exported-model throughput", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
