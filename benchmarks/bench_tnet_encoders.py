"""TNet's encoder: accuracy against FLOPs for dense_cnn's residual stages and the plain strided stack.

One TNet geometry (views resized to 24 px, a 3 x 3 grid, crops half their parent's side, 2 regions,
2 levels, attention pooling), trained with the project's trial loop on cells64.yaml's data (64-px
synthetic cells, its training settings at lr 3e-3) for each encoder, depth and width, same seed:

    residual   dense_cnn's stem and basic blocks (two 3x3 convs per stage, a projection shortcut)
    plain      the stem, then one strided 3x3 conv per stage (the kind of small CNN TNet's code uses)

It answers which encoders belong in a space's TNet ranges: those on the accuracy/FLOPs front here.

    python benchmarks/bench_tnet_encoders.py [--seeds 0] [--epochs 10] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from cellsparse.pareto import pareto_mask  # noqa: E402
from runner.engine.datasets import cached_dataset  # noqa: E402
from runner.engine.trial import run_trial  # noqa: E402
from search_space import default_config  # noqa: E402
from search_space.spec import load_space  # noqa: E402

SPACE = Path(__file__).resolve().parents[1] / "search_space" / "cells64.yaml"
GEOMETRY = {"base_resolution": 24, "grid_size": 3, "overlap": 0.5, "regions": 2, "levels": 2, "embed_dim": 32,
            "pooling": "attention", "input_size": None}
# (encoder, stages, width)
VARIANTS = [("residual", 1, 16), ("residual", 2, 16), ("residual", 3, 16), ("residual", 3, 8),
            ("plain", 2, 16), ("plain", 3, 16), ("plain", 3, 8)]


def training(space_path: Path, epochs: int) -> dict:
    """cells64.yaml's training settings, lr fixed at 3e-3 (inside its searched range)."""
    text = load_space(space_path).training
    fixed = {key: param.values_at_bounds()[0] for key, param in text.items()}
    return {**fixed, "lr": 3e-3, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(SPACE)
    data = cached_dataset(space)
    settings = training(SPACE, args.epochs)
    rows, points = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder, stages, width in VARIANTS:
            config = {**default_config("tnet_traversal"), **GEOMETRY, **settings, "encoder": encoder, "stages": stages,
                      "width": width}
            vals, tests, start = [], [], time.perf_counter()
            for seed in args.seeds:
                metrics = run_trial(config, data=data, trial_dir=Path(tmp) / f"{encoder}{stages}x{width}-{seed}",
                                    objectives=["accuracy", "flops"], augment=space.data.augment, seed=seed)
                vals.append(float(metrics["val_accuracy"]))
                tests.append(float(metrics["test_accuracy"]))
            flops = float(metrics["flops"])
            points.append((statistics.mean(vals), flops))
            rows.append([encoder, stages, width, f"{flops / 1e6:.2f}", f"{100 * statistics.mean(vals):.1f}%",
                         f"{100 * statistics.mean(tests):.1f}%", f"{time.perf_counter() - start:.0f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    front = pareto_mask(np.array(points), ["maximize", "minimize"])
    for row, on in zip(rows, front, strict=True):
        row.append("yes" if on else "")
    members = [f"{r[0]} {r[1]}x{r[2]} ({r[3]} MFLOPs, {r[4]})" for r, on in zip(rows, front, strict=True) if on]
    short = (f"**In short:** at one TNet geometry on 64-px cells, the accuracy/FLOPs front holds {', '.join(members)}"
             f" (mean validation accuracy over seeds {', '.join(map(str, args.seeds))}).")
    table = markdown_table(["encoder", "stages", "width", "MFLOPs", "val acc", "test acc", "train s", "on the front"], rows)
    print(short)
    if not args.no_write:
        body = (f"{stamp(own_command('bench_tnet_encoders.py'))}\n\n{short}\n\nTNet with views resized to 24 px, a 3 x 3 "
                "grid, crops half their parent's side, 2 regions and 2 levels, attention pooling; cells64.yaml's data "
                f"and training settings (lr 3e-3, {args.epochs} epochs), the project's trial loop. `residual`: dense_cnn's "
                "stem and basic blocks; `plain`: the stem, then one strided 3x3 conv per stage.\n\n" + table + "\n")
        write_section("tnet_encoders", "TNet encoders: accuracy against FLOPs", body)


if __name__ == "__main__":
    main()
