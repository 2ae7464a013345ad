"""Fields at 512 px: a search, an export and a predict run end to end on 512-px frames, with their
memory peak and time.

The space is ``search_space/fields.yaml`` cut to fit a few minutes (512-px frames, few images, few
epochs; each strategy's block kept): what it shows is that every step of the path handles 512-px
frames and what that costs per trial, not accuracy. Each step runs as a user runs it, in a process of
its own (``python -m runner.search``, ``runner.export``, ``runner.predict``), and its peak resident
memory is that process's ``ru_maxrss``.

    python benchmarks/bench_fields512.py [--trials 5] [--size 512] [--train 200] [--epochs 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from cellsparse.rundir import read_run  # noqa: E402
from runner.data.fields import generate_fields  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def space_for(args: argparse.Namespace) -> dict:
    """fields.yaml at ``--size`` px with ``--train`` images, ``--epochs`` epochs and ``--trials`` trials, in process."""
    space = yaml.safe_load((ROOT / "search_space" / "fields.yaml").read_text())
    space["name"] = f"fields{args.size}"
    space["data"].update(image_size=args.size, train=args.train, val=args.val, test=args.val)
    space["training"].update(epochs=args.epochs, batch_size=16)
    space["search"].update(trials=args.trials, backend="optuna", max_concurrent=1, sampler={"name": "random", "seed": 1},
                           timeout_s=None)
    space["constraints"]["max_flops"] = space["search"]["reference_point"]["flops"] = 1.0e9
    space["space"]["strategy"]["dense_cnn"]["input_size"] = [None, args.size // 2, args.size // 4]
    space["space"]["strategy"]["dense_vit"]["input_size"] = [None, args.size // 2]
    return space


# Runs ``python -m MODULE ARGS`` and prints the process's own peak RSS (KB on Linux) as its last stderr line.
_PEAK = ("import resource, runpy, sys\nmodule, sys.argv = sys.argv[1], sys.argv[1:]\ntry:\n"
         "    runpy.run_module(module, run_name='__main__', alter_sys=True)\nfinally:\n"
         "    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def timed(module: str, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``python -m module args`` run from the project root."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[-1])
    return wall, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = own_command("bench_fields512.py")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space_file, run = tmp / "space.yaml", tmp / "run"
        space_file.write_text(yaml.safe_dump(space_for(args), sort_keys=False))
        search_s, search_mb = timed("runner.search", "--space", str(space_file), "--out", str(run))
        trials = read_run(run).trials
        rows = []
        for _, t in trials.iterrows():
            metrics = json.loads((run / "trials" / str(int(t["number"])) / "metrics.json").read_text())
            rows.append([int(t["number"]), t["strategy"], f"{metrics['flops'] / 1e6:.1f}", f"{metrics['val_accuracy']:.2f}",
                         f"{metrics.get('train_time_s', 0):.0f}"])
        export_s, export_mb = timed("runner.export", str(run))
        frames = tmp / "frames"
        frames.mkdir()
        batch = generate_fields(16, image_size=args.size, seed=99, split="test")
        for i, image in enumerate(batch.images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(frames / f"{i:02d}.png")
        predict_s, predict_mb = timed("runner.predict", str(run / "export"), str(frames), "--out", str(tmp / "predictions.csv"))
        report_kb = (run / "report.html").stat().st_size / 1024 if (run / "report.html").exists() else float("nan")

    per_trial = np.mean([float(r[4]) for r in rows]) if rows else float("nan")
    table = markdown_table(["trial", "strategy", "MFLOPs", "val acc", "train s"], rows)
    steps = markdown_table(["step", "wall s", "peak RSS MB"], [
        [f"search ({args.trials} trials, data generated once)", f"{search_s:.0f}", f"{search_mb:.0f}"],
        ["export (the knee: ONNX + .pt2, parity, CPU timing)", f"{export_s:.0f}", f"{export_mb:.0f}"],
        ["predict (16 PNG frames)", f"{predict_s:.0f}", f"{predict_mb:.0f}"],
    ])
    text = (f"{stamp(command)}\n\n"
            f"A {args.size}-px search (`search_space/fields.yaml` with {args.train} train and {args.val} val/test frames, "
            f"{args.epochs} epochs, batch 16, {args.trials} random trials, in process), then export and predict, each as "
            f"its own process. Mean training time per trial: {per_trial:.0f} s; report.html {report_kb:.0f} KB "
            f"(large frames are shown block-averaged).\n\n{steps}\n\n{table}\n\n"
            f"Memory: the frames are uint8 ({args.size}x{args.size}x3 = {args.size * args.size * 3 / 2**20:.2f} MB each), "
            f"so 2,000 train frames take {2000 * args.size * args.size * 3 / 2**30:.1f} GB; a batch is converted to float "
            "only when it is used. Time per image scales with the model's FLOPs: see the table. A trial over "
            "`constraints.max_flops` (1 GFLOP here) is recorded at accuracy 0 without training (train s 0)."
            + ("" if torch.cuda.is_available() else " On a GPU: not measured on this machine (torch sees no CUDA "
               "device); run this script where one is."))
    print(text)
    if not args.no_write:
        write_section("fields512", f"Fields at {args.size} px: a search, export and predict end to end", text)


if __name__ == "__main__":
    main()
