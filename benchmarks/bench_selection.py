"""Selection on the cell: does each sparse strategy look at the labelled cell, or anywhere?

Each sparse strategy's default config is trained on the default synthetic data (cells.yaml's data
and training settings: brightfield, 2000 training images, 10 epochs) with the project's own trial
loop, then its ``used_map`` on the validation images is compared with the generator's ``cell_mask``:

    inside = sum(used * mask) / sum(used)      share of what the model used that lies on the cell
    random = mean(mask)                        what selection blind to the image would get
    ratio  = inside / random                   1.0 = no better than random; the target is >= 2.0

Beside each strategy runs the ablation of the mechanism that is meant to make it look at the cell
(TNet without REINFORCE, SparseAttnNet without distillation), same seed, data and budget.

    python benchmarks/bench_selection.py [--epochs 10] [--size 32] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from runner.data import load_dataset, synthetic  # noqa: E402
from runner.engine.checkpoint import load_trained  # noqa: E402
from runner.engine.trial import run_trial  # noqa: E402
from search_space import default_config  # noqa: E402

# cells.yaml's training settings, with its lr range at its geometric middle.
TRAINING = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 0.5}

# (label, strategy, overrides): each strategy's default, then the ablation of its selection signal.
VARIANTS: list[tuple[str, str, dict]] = [
    ("sparse_topk", "sparse_topk", {}),
    ("sparse_topk, no distillation", "sparse_topk", {"distill_weight": 0.0}),
    ("tnet_traversal", "tnet_traversal", {}),
    ("tnet_traversal, no REINFORCE", "tnet_traversal", {"reinforce_weight": 0.0}),
    ("span_pyramid", "span_pyramid", {}),
]


def selection_share(used: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(share of the used-map mass on the cell, the cell's share of the frame) over a batch."""
    inside = float((used * mask).sum() / used.sum().clamp_min(1e-12))
    return inside, float(mask.mean())


def measure(label: str, strategy: str, overrides: dict, *, data, masks: torch.Tensor, epochs: int, workdir: Path) -> dict:
    """Train one variant with the trial loop, reload it as saved, and measure where it looks."""
    config = {**default_config(strategy), **overrides, **TRAINING, "epochs": epochs}
    trial_dir = workdir / label.replace(" ", "_").replace(",", "")
    start = time.perf_counter()
    metrics = run_trial(config, data=data, trial_dir=trial_dir, objectives=["accuracy", "flops"], seed=0)
    model = load_trained(trial_dir).model
    with torch.no_grad():
        used = torch.cat([model.used_map(data.images("val", slice(i, i + 100))) for i in range(0, len(data.val_x), 100)])
    inside, random = selection_share(used, masks)
    return {
        "label": label, "val_accuracy": metrics["val_accuracy"], "flops": metrics["flops"], "k_final": metrics.get("k_final"),
        "inside": inside, "random": random, "ratio": inside / random, "seconds": time.perf_counter() - start,
    }


def in_short(rows: list[dict]) -> str:
    """Plain-words verdict from the measured rows: which strategies look at the cell at >= 2x random,
    and whether each one's selection signal beats its ablation."""
    by_label = {r["label"]: r for r in rows}
    mains = [r for r in rows if "," not in r["label"]]
    good = [r["label"] for r in mains if r["ratio"] >= 2.0]
    short = [f"{r['label']} ({r['ratio']:.2f}x)" for r in mains if r["ratio"] < 2.0]
    sentences = [
        (f"Of the sparse strategies, {', '.join(good)} put at least twice as much of their selection on the cell as "
         "random selection would" if good else "No sparse strategy puts twice as much of its selection on the cell as "
         "random selection would") + (f"; {', '.join(short)} fall short of 2x" if short else "") + "."
    ]
    for r in rows:
        if "," not in r["label"]:
            continue
        name, ablation = r["label"].split(", ", 1)
        base = by_label.get(name)
        if base is None:
            continue
        verdict = "higher" if base["ratio"] > r["ratio"] else "not higher"
        sentences.append(
            f"Against its ablation ({ablation}), {name}'s share on the cell is {verdict}: {base['ratio']:.2f}x against "
            f"{r['ratio']:.2f}x, at {100 * base['val_accuracy']:.1f}% against {100 * r['val_accuracy']:.1f}% validation "
            "accuracy."
        )
    return "**In short:** " + " ".join(sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--size", type=int, default=32, help="image side (cells.yaml: 32; cells64.yaml: 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", help="run only these variant labels (e.g. tnet_traversal)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(source="synthetic", image_size=args.size, seed=0)
    masks = synthetic.generate(len(data.val_x), image_size=args.size, seed=0, split="val").cell_mask
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, strategy, overrides in VARIANTS:
            if args.only and label not in args.only:
                continue
            row = measure(label, strategy, overrides, data=data, masks=masks, epochs=args.epochs, workdir=Path(tmp))
            print(f"{label}: ratio {row['ratio']:.2f}x (inside {row['inside']:.3f}, random {row['random']:.3f}), "
                  f"val {row['val_accuracy']:.3f}, {row['flops'] / 1e6:.2f} MFLOPs, {row['seconds']:.0f} s", flush=True)
            rows.append(row)
    table = markdown_table(
        ["variant", "val acc", "MFLOPs (final k)", "final k", "used mass on the cell", "cell share of frame",
         "ratio to random", "train + measure s"],
        [[r["label"], f"{100 * r['val_accuracy']:.1f}%", f"{r['flops'] / 1e6:.3f}",
          "-" if r["k_final"] is None else f"{r['k_final']:.0f}", f"{r['inside']:.3f}", f"{r['random']:.3f}",
          f"{r['ratio']:.2f}x", f"{r['seconds']:.0f}"] for r in rows],
    )
    short = in_short(rows)
    print(short + "\n\n" + table)
    if not args.no_write and not args.only:
        body = (f"{stamp(own_command('bench_selection.py'))}\n\n{short}\n\nEach sparse strategy's default config, "
                f"trained with the project's trial "
                f"loop on the default synthetic data ({args.size} px brightfield, 2000 training images, {args.epochs} "
                f"epochs, seed 0), then evaluated on the 500 validation images: the share of its `used_map` mass that "
                f"lies on the labelled cell (`cell_mask`), against the cell's share of the frame (what selection blind "
                f"to the image gets). TNet's map includes its whole-image view at base resolution as a floor.\n\n{table}\n")
        write_section("selection", "Selection on the cell: where the sparse strategies look", body)


if __name__ == "__main__":
    main()
