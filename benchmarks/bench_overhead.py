"""What the search machinery costs on top of training, and what running trials side by side buys.

    python benchmarks/bench_overhead.py                 # ~5 minutes on 2 CPU cores
    python benchmarks/bench_overhead.py --trial-s 5 --trials 4        # quicker

Every trial trains the same fixed dense_cnn config (only the seed differs) for as many epochs as
take about ``--trial-s`` seconds on this machine (calibrated first). Three searches run through the
real CLI (``runner.search.main``), each in a fresh run directory:

* optuna backend, one trial at a time;
* ray backend, one trial at a time (1 CPU per trial);
* ray backend, two trials at a time (1 CPU each).

Framework overhead per trial = (search wall time - sum of the trials' own durations) / trials,
where a trial's own duration is measured inside the trial (data loading, training, measuring,
saving) and the wall time includes everything else: Ray start-up and shutdown, sampling, the FLOPs
check, Tune's scheduling, journal writes, trials.csv and the report. Parallel speed-up = wall time
one at a time / wall time two at a time (ray). The table is printed and written to
its section of docs/benchmarks.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = {"width": 16, "stages": 3, "blocks_per_stage": 1, "stem_stride": 1}
TRAIN_IMAGES, IMAGE_SIZE, BATCH = 512, 32, 64
SPEEDUP_TARGET = 1.7  # two trials at once on 2 free cores, against one at a time


def space_text(name: str, *, trials: int, epochs: int, backend: str, concurrent: int) -> str:
    """The space file of one measured search: the fixed dense_cnn config, random sampling."""
    space = {
        "name": name,
        "seed": 0,
        "data": {"source": "synthetic", "image_size": IMAGE_SIZE, "train": TRAIN_IMAGES, "val": 128, "test": 128},
        "objectives": {"accuracy": "maximize", "flops": "minimize"},
        "training": {"epochs": epochs, "batch_size": BATCH, "lr": 2.0e-3, "warmup_epochs": 0.5},
        "search": {"trials": trials, "sampler": {"name": "random", "seed": 0}, "backend": backend,
                   "max_concurrent": concurrent, "resources": {"cpu": 1, "gpu": 0}},
        "space": {"strategy": {"dense_cnn": dict(CONFIG)}},
    }
    return yaml.safe_dump(space, sort_keys=False)


def calibrate_epochs(target_s: float) -> tuple[int, float]:
    """Epochs that make one trial take about ``target_s`` seconds with 1 thread, and the epoch time."""
    from runner.data import load_dataset
    from runner.engine.trial import run_trial
    from search_space.build import default_config

    data = load_dataset(source="synthetic", image_size=IMAGE_SIZE, train=TRAIN_IMAGES, val=128, test=128)
    config = {**default_config("dense_cnn"), **CONFIG, "epochs": 2, "batch_size": BATCH, "lr": 2e-3,
              "weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        run_trial({**config, "epochs": 1}, data=data, trial_dir=Path(tmp) / "warm", objectives=["accuracy", "flops"])
        start = time.perf_counter()
        run_trial(config, data=data, trial_dir=Path(tmp) / "t", objectives=["accuracy", "flops"])
        per_epoch = (time.perf_counter() - start) / 2
    return max(1, round(target_s / per_epoch)), per_epoch


def run_search(workdir: Path, name: str, *, trials: int, epochs: int, backend: str, concurrent: int) -> dict:
    from runner.search import main

    space = workdir / f"{name}.yaml"
    space.write_text(space_text(name, trials=trials, epochs=epochs, backend=backend, concurrent=concurrent))
    out = workdir / name
    start = time.perf_counter()
    code = main(["--space", str(space), "--out", str(out)])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{name}: the search exited with {code}")
    import pandas as pd

    from cellsparse.rundir import read_trials

    table = read_trials(out / "trials.csv")
    if (table["state"] != "COMPLETE").any():
        raise SystemExit(f"{name}: not every trial completed:\n{table[['number', 'state', 'error']]}")
    table = table.sort_values("number")
    durations = table["duration_s"].astype(float)
    starts, ends = pd.to_datetime(table["datetime_start"]), pd.to_datetime(table["datetime_complete"])
    # Optuna's span of a trial runs from the ask (sampling) to the tell; minus the trial's own work it is
    # what the machinery added to that trial: sampling, scheduling, worker hand-off, reporting, the tell.
    added = ((ends - starts).dt.total_seconds() - durations).to_numpy()
    span_s = (ends.max() - starts.min()).total_seconds()
    n = len(table)
    # Steady state: the trials after the first wave (which also pays for starting workers and loading
    # data), each taking its ask-to-tell time; with c trials at once, one finishes every time/c seconds.
    steady = (ends - starts).dt.total_seconds().to_numpy()[concurrent:]
    return {
        "name": name,
        "backend": backend,
        "concurrent": concurrent,
        "trials": n,
        "wall_s": wall,
        "trial_s_mean": float(durations.mean()),
        # everything that is not a trial's own work, spread over the trials (one at a time only)
        "overhead_per_trial_s": (wall - float(durations.sum())) / n if concurrent == 1 else None,
        # per trial once running: the median over all trials but the first
        "steady_overhead_s": float(statistics.median(added[1:])) if n > 1 else float(added[0]),
        # the first trial also waits for a worker process to start (ray) and imports
        "first_trial_extra_s": float(added[0]),
        # imports, Ray start-up and shutdown, the report: before the first ask and after the last tell
        "fixed_s": wall - span_s,
        "throughput_per_min": 60.0 * n / wall,
        "steady_s_per_trial": float(statistics.median(steady)) / concurrent if len(steady) else None,
    }


_BUSY = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(8_000_000): x += i\nprint(time.perf_counter() - t)"


def machine_parallelism() -> float:
    """How much faster two CPU-bound processes finish together than one after the other, right now.

    2.0 on two idle cores; on a shared machine it is what any parallel run can reach at best.
    """
    import subprocess

    def timed(count: int) -> float:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", _BUSY], stdout=subprocess.DEVNULL) for _ in range(count)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - start

    one = timed(1)
    return 2 * one / timed(2)


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.platform()}, {cpus} CPUs ({gpu}), load average {load:.1f} at the start, torch {torch.__version__}"


def speedups(rows: list[dict]) -> tuple[float, float]:
    """(steady-state, end-to-end) speed-up of the ray search with two trials at once over one at a time."""
    seq = next(r for r in rows if r["backend"] == "ray" and r["concurrent"] == 1)
    par = next(r for r in rows if r["backend"] == "ray" and r["concurrent"] == 2)
    return seq["steady_s_per_trial"] / par["steady_s_per_trial"], seq["wall_s"] / par["wall_s"]


def _target_words(steady: float, end_to_end: float) -> str:
    met = (steady >= SPEEDUP_TARGET, end_to_end >= SPEEDUP_TARGET)
    target = f"the {SPEEDUP_TARGET:g}x target"
    if all(met):
        return f"both at or above {target}"
    if not any(met):
        return f"both below {target}"
    return f"{target} met {'in steady state' if met[0] else 'end to end'} only"


def in_short(rows: list[dict], available: float) -> str:
    """The section's plain-words paragraph: the framework's cost per trial per backend, and what two trials at
    once buy (steady state and end to end) against the target and what the machine allowed, from this run."""
    seq = [r for r in rows if r["concurrent"] == 1]
    costs = [f"{r['overhead_per_trial_s']:.2f} s per trial with the {r['backend']} backend" for r in seq]
    text = "The framework adds " + (costs[0] if len(costs) == 1 else ", ".join(costs[:-1]) + " and " + costs[-1])
    ray = next((r for r in seq if r["backend"] == "ray"), None)
    if ray is not None:
        text += (f"; with ray {ray['steady_overhead_s']:.2f} s of it recurs every trial and the rest is one-off "
                 f"start-up ({ray['first_trial_extra_s']:.1f} s for the first trial, {ray['fixed_s']:.1f} s fixed)")
    steady, end_to_end = speedups(rows)

    def pace(value: float) -> str:
        return f"{value:.2f}x as fast" + (" (slower)" if value < 1 else "")

    text += (f". Two trials at once on 2 cores finish {pace(steady)} as one at a time in steady state and "
             f"{pace(end_to_end)} end to end ({_target_words(steady, end_to_end)}; the machine itself allowed "
             f"{available:.2f}x at the time).")
    return "**In short:** " + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial-s", type=float, default=10.0, help="target seconds per trial")
    parser.add_argument("--trials", type=int, default=6, help="trials per search")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table to this file instead of its section of docs/benchmarks.md")
    args = parser.parse_args()

    where = machine()
    before = machine_parallelism()
    torch.set_num_threads(1)
    epochs, per_epoch = calibrate_epochs(args.trial_s)
    print(f"calibrated: {per_epoch:.2f} s per epoch with 1 thread -> {epochs} epochs per trial")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend, concurrent in (("optuna_seq", "optuna", 1), ("ray_seq", "ray", 1), ("ray_par2", "ray", 2)):
            rows.append(run_search(Path(tmp), name, trials=args.trials, epochs=epochs, backend=backend,
                                   concurrent=concurrent))
            print(json.dumps(rows[-1]))
    seq, par = rows[1], rows[2]
    steady_speedup, speedup = speedups(rows)
    available = (before + machine_parallelism()) / 2
    lines = [
        "# Framework overhead and parallel throughput",
        "",
        f"`python benchmarks/bench_overhead.py --trial-s {args.trial_s:g} --trials {args.trials}` on {where}.",
        f"Each trial trains the same dense_cnn config for {epochs} epochs ({TRAIN_IMAGES} images of "
        f"{IMAGE_SIZE} px, 1 thread, ~{args.trial_s:g} s).",
        "",
        in_short(rows, available),
        "",
        "| backend | trials at once | trials | wall time (s) | mean trial (s) | overhead per trial (s) "
        "| steady overhead per trial (s) | first trial extra (s) | fixed start + end (s) | trials / min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for row in rows:
        lines.append(f"| {row['backend']} | {row['concurrent']} | {row['trials']} | {row['wall_s']:.1f} | "
                     f"{row['trial_s_mean']:.2f} | {cell(row['overhead_per_trial_s'])} | "
                     f"{row['steady_overhead_s']:.2f} | {row['first_trial_extra_s']:.2f} | {row['fixed_s']:.1f} | "
                     f"{row['throughput_per_min']:.2f} |")
    lines += [
        "",
        f"Parallel speed-up, ray, 2 trials at once (1 CPU each) vs one at a time: **{steady_speedup:.2f}x** "
        f"in steady state (seconds per finished trial after the first wave: {seq['steady_s_per_trial']:.2f} "
        f"vs {par['steady_s_per_trial']:.2f}), **{speedup:.2f}x** end to end for this short search (wall time, "
        f"with the start-up that does not parallelise). Target >= {SPEEDUP_TARGET:g}x on 2 free cores. "
        f"The machine itself allowed **{available:.2f}x** at the time: two "
        "CPU-bound Python processes finished that much faster together than one after the other (measured "
        "before and after the searches; 2.00x on two idle cores).",
        "",
        "Overhead per trial = (wall time - sum of the trials' own durations) / trials, one trial at a time: "
        "all the machinery costs, spread over this short search. It splits into a steady part each trial "
        "pays (from Optuna's ask to its tell, minus the trial's own work: sampling, the FLOPs check, Tune "
        "scheduling, hand-off to the worker, reports, the tell, trials.csv), an extra for the first trial "
        "(a Ray worker process starting and importing torch; workers are reused after that), and a fixed "
        "part before the first ask and after the last tell (imports, Ray start-up and shutdown, the report). "
        "A trial's own duration includes loading its data (once per worker process).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _doc import write_section

        title, _, body = text.partition("\n")
        write_section("overhead", title.lstrip("# ").strip(), body)
        print("written to docs/benchmarks.md")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
