"""Data pipeline speed (and, optionally, how hard the synthetic task is).

Times generating 10,000 synthetic images per modality (32 px, and brightfield at 64 px) and loading
pbc28.npz, both as wall time and as this process's CPU time: on a shared machine the wall time
also counts other people's work, the CPU time does not. With ``--accuracy`` it also trains a small
plain-torch CNN (3 double-conv blocks, 32-64-128 channels, 8 epochs, 2000 training images) on each
modality at the default difficulty and reports validation accuracy on 1000 images.

    python benchmarks/bench_data.py [--accuracy] [--n 10000] [--threads 1] [--no-write]

Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from runner.data import MODALITY_CHANNELS, load_dataset  # noqa: E402
from runner.data.synthetic import SYNTHETIC_CLASSES, generate  # noqa: E402
from tests.runner.train_probe import val_accuracy  # noqa: E402

PBC28 = ROOT / ".." / "shared" / "data" / "pbc28.npz"


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bench_generation(n: int) -> list[dict]:
    rows = []
    for modality, size in [(m, 32) for m in MODALITY_CHANNELS] + [("brightfield", 64)]:
        generate(50, modality=modality, image_size=size)  # warm caches (blur matrices)
        wall, cpu, _ = timed(lambda m=modality, s=size: generate(n, modality=m, image_size=s))
        rows.append({"what": f"generate {n:,} {modality} {size}x{size}", "wall_s": wall, "cpu_s": cpu,
                     "kind": "generate", "n": n, "modality": modality, "size": size})
    return rows


def bench_pbc28() -> list[dict]:
    if not PBC28.is_file():
        print(f"skipping pbc28: {PBC28} not found")
        return []
    wall, cpu, data = timed(lambda: load_dataset(source="npz", path=PBC28))
    n = len(data.train_y) + len(data.val_y) + len(data.test_y)
    return [{"what": f"load pbc28.npz ({n:,} images, normalised)", "wall_s": wall, "cpu_s": cpu, "kind": "load", "n": n}]


def cnn(in_channels: int, classes: int) -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2),
        )

    return nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def cnn_accuracy(modality: str, *, train: int = 2000, epochs: int = 8, seed: int = 0) -> float:
    """Validation accuracy of the small dense CNN on the default synthetic data (difficulty 0.5)."""
    data = load_dataset(source="synthetic", modality=modality, train=train, val=1000, test=10, seed=seed)
    torch.manual_seed(seed)
    return val_accuracy(cnn(data.in_channels, data.num_classes), data, epochs=epochs, lr=2e-3)


def in_short(results: dict) -> str:
    """The section's plain-words paragraph, from this run's figures: generation speed in images/s, the pbc28
    load time (when it was measured) and the small CNN's accuracy per modality (when ``--accuracy`` ran)."""
    generated = [r for r in results["timings"] if r.get("kind") == "generate"]
    rates = [f"{r['n'] / r['wall_s']:,.0f}{' images/s' if i == 0 else ''} ({r['modality']}, {r['size']} px)"
             for i, r in enumerate(generated)]
    sentences = []
    if rates:
        listed = rates[0] if len(rates) == 1 else ", ".join(rates[:-1]) + " and " + rates[-1]
        sentences.append(f"synthetic images generate at {listed}, by wall time")
    for r in results["timings"]:
        if r.get("kind") == "load":
            sentences.append(f"loading pbc28.npz ({r['n']:,} images) takes {r['wall_s']:.2f} s")
    accuracy = results.get("cnn_val_accuracy")
    if accuracy:
        parts = [f"{a:.2f} on {m}" for m, a in accuracy.items()]
        chance = results.get("chance")
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        sentences.append(f"a small CNN reaches validation accuracy {listed}" + (f" (chance {chance:.2f})" if chance else ""))
    return "**In short:** " + " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="images per generation timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for loading and training")
    parser.add_argument("--accuracy", action="store_true", help="also train the small CNN per modality (minutes)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = bench_generation(args.n) + bench_pbc28()
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    table = markdown_table(["what", "wall s", "CPU s"], [[r["what"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}"] for r in rows])
    print(table)
    results: dict = {"timings": rows}
    head = (f"{stamp(own_command('bench_data.py'))} "
            f"Load average (1 min) after the timings: {load}.\n\n")
    body = f"{table}\n"

    if args.accuracy:
        accuracy = {m: cnn_accuracy(m) for m in MODALITY_CHANNELS}
        results["cnn_val_accuracy"] = accuracy
        results["chance"] = 1 / len(SYNTHETIC_CLASSES)
        acc_table = markdown_table(["modality", "val accuracy"], [[m, f"{a:.3f}"] for m, a in accuracy.items()])
        print(acc_table)
        body += (
            "\nSmall dense CNN (3 double-conv blocks 32-64-128, AdamW + one-cycle, 8 epochs, batch 64, 2000 train"
            " images, seed 0) on the default synthetic data (32 px, difficulty 0.5), 1000 validation images"
            f" (chance {results['chance']:g}):\n\n" + acc_table + "\n"
        )
    short = in_short(results)
    print(short)
    if not args.no_write:
        body = f"{head}{short}\n\n{body}"
        write_section("data", "Data: synthetic generation and pbc28 loading", body)
        print("wrote docs/benchmarks.md")
    return results


if __name__ == "__main__":
    main()
