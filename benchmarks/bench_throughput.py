"""The throughput objective held to account: does a search's recorded throughput hold when measured
again elsewhere, and what does it cost a trial?

    python benchmarks/bench_throughput.py                       # search, re-measure, write the section
    python benchmarks/bench_throughput.py --run-dir runs/tp64   # re-measure a finished run instead

1. A search on ``search_space/cells64.yaml`` with objectives accuracy and throughput (a copy of the
   space with ``--epochs`` epochs per trial and ``--trials`` trials, otherwise as shipped: the ray
   backend, two trials at a time, the default ``deploy`` section).
2. Every trained trial re-measured in a separate process (this script with ``--remeasure``), in a
   different order from the search's and under whatever load the machine has then: the rank
   agreement (Spearman) of recorded against re-measured throughput, on the front and over all
   trials, calibrated (the objective as recorded) and raw (``throughput_raw``: the same timing
   without the reference).
3. The cost: the time a trial spends on the objective (the deployed measurement, export and timing,
   before training; twice where training moved the trial's k), timed in that process, against the
   trial's own time and against a default trial's (the same trial at cells64's 10 epochs, from its
   per-epoch times). The same for an ONNX export, to show why pt2 is the default runtime.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from cellsparse.pareto import pareto_mask  # noqa: E402
from cellsparse.rundir import CONFIG_FILE, SPACE_FILE, TRIALS_DIR, TRIALS_FILE, eligible_mask, read_trials  # noqa: E402
from objectives.throughput import MIN_TIME_S  # noqa: E402

OBJECTIVES = ["accuracy", "throughput"]
DIRECTIONS = ["maximize", "maximize"]
DEFAULT_EPOCHS = 10  # cells64.yaml's own epochs: what "a default trial" trains


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's r of the ranks."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def concordant_pairs(recorded: np.ndarray, again: np.ndarray, min_gap: float) -> tuple[int, int]:
    """(pairs kept in order, pairs) among the pairs whose recorded figures differ by more than
    ``min_gap`` (relative to the smaller): whether the ranks that matter hold, whatever near-ties do."""
    kept = total = 0
    for i in range(len(recorded)):
        for j in range(i + 1, len(recorded)):
            low, high = sorted((recorded[i], recorded[j]))
            if high > (1 + min_gap) * low:
                total += 1
                kept += int((recorded[i] - recorded[j]) * (again[i] - again[j]) > 0)
    return kept, total


SPEARMAN_TARGET = 0.9
PAIR_GAP = 0.25  # recorded figures this far apart are told apart by the objective, the measured repeatability says
REPEAT_TIMES = (MIN_TIME_S, 2 * MIN_TIME_S, 4 * MIN_TIME_S)  # seconds of rounds a repeatability pass times each model for
COST_TARGET = 0.05  # of a default trial's time
MIN_RANKED = 4  # front trials below which the verdict is on all trained trials


def in_short(*, trials: int, epochs: int, front: int, trained: int, rho: dict, rel: dict, measure_s: float,
             share: float, worst: float, onnx_s: float | None, onnx_share: float | None,
             setting: str = "pt2, batch 64, 1 thread(s)", pairs: tuple[int, int] | None = None) -> str:
    """The section's verdict, from its figures: the rank agreement against its target (calibrated and
    raw), and the cost against its target (pt2, and ONNX where it was timed)."""
    # a rank correlation of two or three points is +-1 or +-0.5 whatever the figures: judge all trials then
    judged = "front" if front >= MIN_RANKED else "all"
    held = "meets" if rho[(judged, "raw")] >= SPEARMAN_TARGET else "misses"
    cheap = "within" if share <= COST_TARGET else "over"
    other = "all" if judged == "front" else "front"
    text = (f"On a {trials}-trial cells64 search ({epochs} epochs a trial, 2 at a time, {setting}), "
            f"re-measured in a separate process, the {front if judged == 'front' else trained} "
            f"{'front' if judged == 'front' else 'trained'} trials rank with Spearman "
            f"{rho[(judged, 'raw')]:.2f} as recorded by default (uncalibrated: {held} the {SPEARMAN_TARGET} target) "
            f"and {rho[(judged, 'calibrated')]:.2f} calibrated ({rho[(other, 'raw')]:.2f} and "
            f"{rho[(other, 'calibrated')]:.2f} over the "
            f"{front if other == 'front' else trained} {'front' if other == 'front' else 'trained'} trials; the median "
            f"figure moved {100 * rel['calibrated']:.0f}% calibrated, {100 * rel['raw']:.0f}% raw)"
            + (f"; of the trained trials' pairs more than {100 * PAIR_GAP:.0f}% apart, {pairs[0]} of {pairs[1]} kept "
               "their order" if pairs else "")
            + ". "
            f"The objective costs a trial a median {measure_s:.1f} s (the deployed measurement before training, "
            f"and again at the end where training moved the trial's k): {100 * share:.1f}% of a default 10-epoch trial, "
            f"{cheap} the {100 * COST_TARGET:.0f}% target "
            f"(at most {100 * worst:.1f}%)")
    if onnx_s is not None and onnx_share is not None:
        text += (f"; on onnxruntime the ONNX export adds a median {onnx_s:.1f} s a measurement, "
                 f"{100 * onnx_share:.1f}% in all")
    return text + "."


def make_space(out: Path, *, trials: int, epochs: int) -> Path:
    raw = yaml.safe_load((ROOT / "search_space" / "cells64.yaml").read_text())
    raw["name"] = "cells64_throughput"
    raw["objectives"] = {"accuracy": "maximize", "throughput": "maximize"}
    raw["training"]["epochs"] = epochs
    raw["search"]["trials"] = trials
    raw["search"]["reference_point"] = {"accuracy": 0.0, "throughput": 100.0}
    raw["search"].pop("timeout_s", None)
    raw["deploy"] = {"calibrate": True}  # both figures from the same rounds: the default (raw) and the calibrated
    path = out / "cells64_throughput.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# The re-measuring process


def remeasure(run_dir: Path, numbers: list[int], onnx: bool) -> list[dict]:
    """Each trial's model rebuilt and timed as the run's deploy section says, in this process; then
    the cost a default run's trial pays (uncalibrated: no reference in the rounds), and the timed
    program against the deployed .pt2 file side by side."""
    from dataclasses import replace

    import torch

    from objectives import measure_throughput
    from objectives.throughput import interleaved_rates
    from runner.engine.checkpoint import load_trained
    from runner.engine.deploy import deployment_for, onnx_prepare, pt2_file_prepare, use_space_deployment
    from search_space.build import build_model
    from search_space.spec import parse_space

    space = parse_space(yaml.safe_load((run_dir / SPACE_FILE).read_text()), source=run_dir / SPACE_FILE)
    torch.set_num_threads(max(1, int(space.search.cpus_per_trial)))  # as in a trial process
    use_space_deployment(space, "cpu", run_dir)  # the run's calibration, as its trials used it
    deployment = deployment_for(space.deploy, "cpu")
    default = replace(deployment, calibrate=False)  # what a trial of a default run times
    rows = []
    timed: dict[int, tuple] = {}  # trial -> its timed program and batch size
    for number in numbers:
        trained = load_trained(run_dir / TRIALS_DIR / str(number), number)
        model = trained.model.eval()
        meta = trained.meta
        shape = int(meta["in_channels"]), int(meta["num_classes"]), int(meta["image_size"])
        config = json.loads((run_dir / TRIALS_DIR / str(number) / CONFIG_FILE).read_text())
        k_moved = build_model(config, *shape).k != model.k  # before any forward: the counts every image runs at
        images = torch.randn(32, shape[0], shape[2], shape[2], generator=torch.Generator().manual_seed(number))
        figure = measure_throughput(model, images, deployment)
        start = time.perf_counter()
        measure_throughput(model, images, default)
        row = {"number": number, "seconds": time.perf_counter() - start, "measurements": 2 if k_moved else 1,
               "throughput": figure.images_per_s,
               "throughput_spread": figure.spread, "throughput_raw": figure.raw_images_per_s}
        batch = images.repeat(2, 1, 1, 1)[: space.deploy.batch_size]
        with torch.no_grad():
            start = time.perf_counter()
            file_run = pt2_file_prepare(model, batch, space.deploy.threads)
            row["file_prepare_s"] = time.perf_counter() - start
            timed_run = deployment.prepare(model, batch, space.deploy.threads)
            rates = interleaved_rates([timed_run, file_run], len(batch))
        row["file_ratio"] = float(np.median(rates[:, 0] / rates[:, 1]))  # timed program / deployed file
        if onnx:
            start = time.perf_counter()
            with torch.no_grad():
                onnx_prepare(model, batch, space.deploy.threads)
            row["onnx_prepare_s"] = time.perf_counter() - start
        rows.append(row)
        timed[number] = (timed_run, len(batch))
        print(f"trial {number}: {figure.images_per_s:,.0f} images/s (raw {figure.raw_images_per_s:,.0f}), "
              f"objective {row['measurements'] * row['seconds']:.2f} s, program / file {row['file_ratio']:.2f}",
              flush=True)
    # Repeatability: every model timed in two more passes over them all (the second in the other order),
    # in each pass at every length of rounds back to back: what longer timing would buy, every length
    # seeing the same time between a model's two timings
    for attempt, order in enumerate((rows, rows[::-1])):
        for row in order:
            run, size = timed[row["number"]]
            for seconds in REPEAT_TIMES:
                rates = interleaved_rates([run], size, min_time_s=seconds)[:, 0]
                row[f"repeat_{seconds}_{attempt}"] = float(np.median(rates))
    return rows


# ---------------------------------------------------------------------------------------------
# The search, the comparison and the section


def epoch_seconds(run_dir: Path, number: int) -> float | None:
    path = run_dir / TRIALS_DIR / str(number) / "history.json"
    if not path.exists():
        return None
    history = json.loads(path.read_text())
    times = [row["epoch_time_s"] for row in history if "epoch_time_s" in row]
    return float(np.mean(times)) if times else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the search's run goes (default: a temp folder)")
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished run to re-measure instead of searching")
    parser.add_argument("--trials", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-onnx", action="store_true", help="skip timing the ONNX export")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    parser.add_argument("--remeasure", type=Path, default=None, help=argparse.SUPPRESS)  # the separate process
    parser.add_argument("--numbers", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.remeasure is not None:
        numbers = [int(n) for n in args.numbers.split(",") if n]
        args.json.write_text(json.dumps(remeasure(args.remeasure, numbers, not args.no_onnx)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    run_dir = args.run_dir
    search_s = None
    if run_dir is None:
        run_dir = args.out or tmp / "run"
        space = make_space(tmp, trials=args.trials, epochs=args.epochs)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "runner.search", "--space", str(space), "--out", str(run_dir),
                               "--progress", "trials"], cwd=ROOT)
        search_s = time.perf_counter() - start
        if done.returncode != 0:
            print(f"the search failed (exit {done.returncode})", file=sys.stderr)
            return 1

    trials = read_trials(run_dir / TRIALS_FILE, OBJECTIVES)
    ok = trials[eligible_mask(trials, OBJECTIVES)].reset_index(drop=True)
    front = pareto_mask(ok[OBJECTIVES].to_numpy(float), DIRECTIONS)
    ok["front"] = front
    numbers = list(ok["number"].astype(int))[::-1]  # the other order from the search's
    out_json = tmp / "remeasured.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--remeasure", str(run_dir), "--numbers",
                    ",".join(map(str, numbers)), "--json", str(out_json), *(["--no-onnx"] if args.no_onnx else [])],
                   cwd=ROOT, check=True)
    again = pd.DataFrame(json.loads(out_json.read_text())).rename(
        columns={"throughput": "again", "throughput_raw": "again_raw", "throughput_spread": "again_spread"})
    table = ok.merge(again, on="number")
    table["epoch_s"] = [epoch_seconds(run_dir, int(n)) for n in table["number"]]
    table["default_s"] = table["duration_s"] + (DEFAULT_EPOCHS - args.epochs) * table["epoch_s"]
    table["cost_s"] = table["seconds"] * table["measurements"]  # what a trial spends on the objective
    table["overhead"] = table["cost_s"] / table["duration_s"]
    table["overhead_default"] = table["cost_s"] / table["default_s"]
    if "onnx_prepare_s" in table:
        table["onnx_overhead_default"] = (table["cost_s"] + table["onnx_prepare_s"]) / table["default_s"]

    on_front = table[table["front"]]
    rho = {(scope, kind): spearman(frame[rec].to_numpy(), frame[new].to_numpy())
           for scope, frame in (("front", on_front), ("all", table))
           for kind, rec, new in (("calibrated", "throughput", "again"), ("raw", "throughput_raw", "again_raw"))}
    rel = {kind: float(np.median(np.abs(table[new] / table[rec] - 1)))
           for kind, rec, new in (("calibrated", "throughput", "again"), ("raw", "throughput_raw", "again_raw"))}
    spread = float(np.median(table["throughput_spread"] / table["throughput"]))
    pairs = {scope: concordant_pairs(frame["throughput_raw"].to_numpy(), frame["again_raw"].to_numpy(), PAIR_GAP)
             for scope, frame in (("front", on_front), ("all", table))}

    rows = [[int(r.number), r.strategy, f"{r.accuracy:.4f}", f"{r.throughput:,.0f} ± {r.throughput_spread:,.0f}",
             f"{r.throughput_raw:,.0f}", f"{r.again:,.0f}", f"{r.again_raw:,.0f}", f"{r.duration_s:.0f}",
             f"{r.measurements}", f"{r.seconds:.2f}", f"{100 * r.overhead_default:.1f}%", f"{r.file_ratio:.2f}",
             f"{r.file_prepare_s:.2f}"]
            + ([f"{r.onnx_prepare_s:.1f}"] if "onnx_prepare_s" in table else [])
            for r in on_front.sort_values("throughput").itertuples()]
    header = ["trial", "strategy", "accuracy", "throughput (recorded ± IQR)", "raw (recorded)", "re-measured",
              "re-measured raw", "trial s", "measurements", "measure s", "cost / default trial",
              "timed program / .pt2 file", ".pt2 file prepare s"]
    if "onnx_prepare_s" in table:
        header.append("ONNX export s")
    med_default = float(np.median(table["overhead_default"]))
    max_default = float(np.max(table["overhead_default"]))
    onnx_s = float(np.median(table["onnx_prepare_s"])) if "onnx_prepare_s" in table else None
    onnx_share = float(np.median(table["onnx_overhead_default"])) if "onnx_prepare_s" in table else None
    deploy = yaml.safe_load((run_dir / SPACE_FILE).read_text()).get("deploy") or {}
    setting = (f"{deploy.get('runtime', 'pt2')}, batch {deploy.get('batch_size', 64)}, "
               f"{deploy.get('threads', 1)} thread(s)")
    short = in_short(trials=len(trials), epochs=args.epochs, front=len(on_front), trained=len(table), rho=rho,
                     rel=rel, measure_s=float(np.median(table["cost_s"])), share=med_default, worst=max_default,
                     onnx_s=onnx_s, onnx_share=onnx_share, setting=setting, pairs=pairs["all"])
    command = own_command("bench_throughput.py", argv)
    body = "\n\n".join([
        stamp(command),
        f"**In short:** {short}",
        markdown_table(header, rows),
        (f"Spearman rank correlation of recorded against re-measured throughput: front "
         f"{rho[('front', 'calibrated')]:.3f} calibrated, {rho[('front', 'raw')]:.3f} raw; all trained trials "
         f"{rho[('all', 'calibrated')]:.3f} calibrated, {rho[('all', 'raw')]:.3f} raw. Median |re-measured / recorded "
         f"- 1|: {100 * rel['calibrated']:.1f}% calibrated, {100 * rel['raw']:.1f}% raw. Median spread (IQR of the "
         f"per-round figures / value): {100 * spread:.1f}%. Pairs of trials whose recorded figures (raw) differ "
         f"by more than {100 * PAIR_GAP:.0f}% kept their order when re-measured: {pairs['front'][0]} of "
         f"{pairs['front'][1]} on the front, {pairs['all'][0]} of {pairs['all'][1]} over all trained trials "
         "(closer pairs are within the machine's noise: see the repeatability below)."
         + (f" The search took {search_s / 60:.1f} minutes." if search_s else "")),
        ("Repeatability, over the trained trials, each timed in two more passes over them all in the "
         "re-measuring process (the second pass in the other order; within a pass every length of rounds back "
         "to back): Spearman "
         + ", ".join(f"{spearman(table[f'repeat_{t}_0'].to_numpy(), table[f'repeat_{t}_1'].to_numpy()):.2f} with "
                     f"{t:g} s of rounds (median |second / first - 1| "
                     f"{100 * float(np.median(np.abs(table[f'repeat_{t}_1'] / table[f'repeat_{t}_0'] - 1))):.0f}%)"
                     for t in REPEAT_TIMES)
         + f"; the objective times {MIN_TIME_S:g} s."),
        (f"What is timed against what is deployed, over the {len(table)} trained trials: the program the objective "
         f"times (exported for the deploy batch, run from memory) ran at a median "
         f"{table['file_ratio'].median():.2f}x the rate of the .pt2 file `runner.export` writes (dynamic batch, "
         f"saved and loaded back; range {table['file_ratio'].min():.2f}-{table['file_ratio'].max():.2f}x, timed "
         f"side by side in interleaved rounds), and its whole measurement took a median "
         f"{table['seconds'].median():.2f} s where preparing the file alone took {table['file_prepare_s'].median():.2f} s."),
        ("Recorded: the figure each trial wrote (before training, or at its end where training moved its k), in"
         " its Ray worker, while the other trial trained beside it. Re-measured: the same weights rebuilt and "
         "timed again in one fresh process, trials in the reverse order, the machine otherwise as it was. "
         "Calibrated figures are the model's rate over the fixed reference CNN's in the same interleaved "
         "rounds, times the reference's best rate at calibration (README, \"Throughput\"): one rate for the "
         "run, measured by the search before its first trial and read by every trial and by the re-measuring "
         "process; raw figures are the model's median rate in the same rounds. The cost is timed as a default "
         "run pays it (uncalibrated: no reference in the rounds): the measure time is the export (torch.export"
         " for the deploy batch) plus the timing, counted twice for a trial whose k training moved (it is "
         "timed again at its end). A default trial's time is the trial's own time with its per-epoch time for"
         " the epochs it did not train."),
    ])
    print(body)
    if not args.no_write:
        write_section("throughput", "Throughput objective: rank agreement and cost", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
