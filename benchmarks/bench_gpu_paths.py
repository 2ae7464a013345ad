"""GPU: what the trial's device path buys (data resident on the GPU, bf16 autocast) and what compiled
inference buys, on real cells.

    python benchmarks/bench_gpu_paths.py --data pbc28.npz --json gpu_paths.json     # ~5 min on one H200
    python benchmarks/bench_gpu_paths.py --from-json docs/bench_gpu_paths.json      # re-render only
    python benchmarks/bench_gpu_paths.py --device cpu --epochs 1 --train 512 --no-compile --no-write  # check the script

Where the device is CUDA and torch sees none, or pbc28.npz is absent, it says so and exits 0 without
writing anything.

1. **Training**: each strategy's default config on pbc28 (blood_cells.yaml's training settings:
   batch 128, lr 4e-3 (inside its searched range), weight decay 0.05, one warm-up epoch), ``--epochs``
   epochs, seed 0, trained by the project's own ``run_trial`` three ways: fp32 with every batch
   copied from host memory (the path before the data went onto the device; forced here by giving
   the data no GPU memory), fp32 with the data on the GPU, and bf16 autocast with the data on the GPU.
   Seconds per epoch are the median over the epochs after the first (which holds CUDA's start-up).
2. **Inference**: each fp32 model of part 1 exported to .pt2 as ``runner.export`` does, then run
   through ``runner.engine.artefacts.pt2_runner`` as ``runner.predict`` runs it: plain, and compiled
   (``predict --compile``: CUDA graphs; at the smaller batch size only, since each batch size
   compiles again), torch eager beside them; images from host memory, the copy to the GPU and the
   logits' copy back included.

Raw figures go to ``--json`` as they are measured (a part that fails keeps the ones before it); the
section "gpu_paths" of docs/benchmarks.md is rendered from them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import add_pbc28_argument, gpu_skip_reason, machine_record, markdown_table, own_command, write_section  # noqa: E402

from runner.data import load_dataset  # noqa: E402
from runner.engine import trial as trial_module  # noqa: E402
from runner.engine.artefacts import pt2_runner  # noqa: E402
from runner.engine.checkpoint import load_trained  # noqa: E402
from runner.engine.exporters import save_pt2, to_exported_program  # noqa: E402
from runner.export.parity import time_batches  # noqa: E402
from search_space import default_config  # noqa: E402

STRATEGIES = ("dense_cnn", "dense_vit", "sparse_topk", "tnet_traversal", "span_pyramid")
TRAINING = {"batch_size": 128, "lr": 4e-3, "weight_decay": 0.05, "warmup_epochs": 1.0}
#: (label, precision, data on the device)
VARIANTS = (("fp32, batches copied from the host", "fp32", False),
            ("fp32, data on the GPU", "fp32", True),
            ("bf16, data on the GPU", "bf16", True))
BATCH_SIZES = (256, 4096)
COMPILED = ".pt2 compiled (predict --compile)"


def variant_dir(tmp: Path, strategy: str, precision: str, resident: bool) -> Path:
    """Where a strategy's variant trains (by the precision it asks for, not the one a CPU falls back to)."""
    return tmp / f"{strategy}-{precision}-{int(resident)}"


def train_variants(data: Any, tmp: Path, *, device: str, epochs: int, save: Any, results: dict[str, Any]) -> None:
    results["training"] = []
    share = trial_module.DEVICE_DATA_SHARE
    for strategy in STRATEGIES:
        for label, precision, resident in VARIANTS:
            config = {**default_config(strategy), **TRAINING, "epochs": epochs, "precision": precision}
            trial_dir = variant_dir(tmp, strategy, precision, resident)
            trial_module.DEVICE_DATA_SHARE = share if resident else 0.0  # no GPU memory for data: batches copied
            try:
                metrics = trial_module.run_trial(config, data=data, trial_dir=trial_dir, objectives=["accuracy", "flops"],
                                                 device=device, seed=0)
            finally:
                trial_module.DEVICE_DATA_SHARE = share
            history = json.loads((trial_dir / "history.json").read_text())
            epoch_s = [row["epoch_time_s"] for row in history[1:]] or [history[0]["epoch_time_s"]]
            results["training"].append({
                "strategy": strategy, "variant": label, "precision": metrics["precision"], "resident": resident,
                "epochs": epochs, "epoch_s": statistics.median(epoch_s),
                "steps_per_epoch": math.ceil(len(data.train_y) / TRAINING["batch_size"]),
                "train_time_s": metrics["train_time_s"], "val_accuracy": metrics["val_accuracy"],
                "test_accuracy": metrics["test_accuracy"], "flops": metrics["flops"]})
            print(json.dumps(results["training"][-1]), flush=True)
            save(results)


def inference(tmp: Path, rows: list[dict[str, Any]], *, device: str, compile_models: bool, save: Any,
              results: dict[str, Any]) -> None:
    results["inference"] = []
    for row in rows:
        if row["variant"] != VARIANTS[1][0]:  # the fp32 models trained with the data on the device
            continue
        trained = load_trained(variant_dir(tmp, row["strategy"], VARIANTS[1][1], VARIANTS[1][2]))
        model = trained.model.eval().cpu()
        c, s = int(trained.meta["in_channels"]), int(trained.meta["image_size"])
        path = tmp / f"{row['strategy']}.pt2"
        save_pt2(to_exported_program(model, torch.rand(4, c, s, s)), path, json.dumps({"strategy": row["strategy"]}))
        on_device = model.to(device)

        def eager(x: np.ndarray, model: torch.nn.Module = on_device) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

        runtimes: list[tuple[str, Any]] = [("torch eager", lambda eager=eager: eager),
                                           (".pt2", lambda path=path: pt2_runner(path, device=device))]
        if compile_models:  # a compiled runner keeps the first batch size it sees: one runner per batch size
            runtimes.append((COMPILED, lambda path=path: pt2_runner(path, device=device, compiled=True)))
        for runtime, make in runtimes:
            # compiling takes tens of seconds per batch size: the compiled runner at the smaller one, where
            # launches rather than arithmetic bound the time
            for batch in BATCH_SIZES[:1] if runtime == COMPILED else BATCH_SIZES:
                start = time.perf_counter()
                run = make()
                x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(1)).numpy()
                run(x)  # first call: loads, and for the compiled runner compiles and records its graphs
                first_s = time.perf_counter() - start
                best = min(time_batches(run, x, min_time_s=0.3, max_repeats=100) for _ in range(3))
                results["inference"].append({"strategy": row["strategy"], "flops": row["flops"], "runtime": runtime,
                                             "batch": batch, "images_per_s": batch / best * 1e3, "first_call_s": first_s})
                print(json.dumps(results["inference"][-1]), flush=True)
                save(results)


# ---------------------------------------------------------------------------------------------
# Rendering


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _training_text(rows: list[dict[str, Any]]) -> str:
    by = {(r["strategy"], r["variant"]): r for r in rows}
    copied, resident, bf16 = (label for label, _, _ in VARIANTS)
    table, speed_resident, speed_bf16 = [], [], []
    for strategy in STRATEGIES:
        base = by.get((strategy, copied))
        for label, _, _ in VARIANTS:
            r = by.get((strategy, label))
            if r is None:
                continue
            ratio = base["epoch_s"] / r["epoch_s"] if base else float("nan")
            table.append([strategy, label, r["precision"], f"{r['flops'] / 1e6:.2f}", f"{r['epoch_s']:.2f}",
                          f"{1e3 * r['epoch_s'] / r['steps_per_epoch']:.1f}", f"{ratio:.2f}x", f"{r['train_time_s']:.0f}",
                          _pct(r["val_accuracy"]), _pct(r["test_accuracy"])])
        if base and (strategy, resident) in by:
            speed_resident.append(base["epoch_s"] / by[(strategy, resident)]["epoch_s"])
        if (strategy, resident) in by and (strategy, bf16) in by:
            speed_bf16.append(by[(strategy, resident)]["epoch_s"] / by[(strategy, bf16)]["epoch_s"])
    epochs = rows[0]["epochs"] if rows else 0
    words = []
    if speed_resident:
        words.append(f"data on the GPU makes an epoch {min(speed_resident):.2f}-{max(speed_resident):.2f}x as fast as "
                     "copying each batch from the host")
    if speed_bf16:
        words.append(f"bf16 autocast then changes it by {min(speed_bf16):.2f}-{max(speed_bf16):.2f}x (above 1: faster)")
    return ("; ".join(words) + ".\n\n" if words else "") + (
        f"Each strategy's default config on pbc28 at 28 px, {epochs} epochs, seed 0, batch 128, the project's trial loop "
        "(fused AdamW on CUDA in every variant). s/epoch: median over the epochs after the first; speed: the copied "
        "variant's s/epoch over this one's. Accuracy after so few epochs is for checking that each variant learns as "
        "well, not a figure of the strategy.\n\n"
        + markdown_table(["strategy", "variant", "ran in", "MFLOPs", "s/epoch", "ms/step", "speed", "trial s", "val acc",
                          "test acc"], table))


def _inference_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No inference figures."
    table = [[r["strategy"], f"{r['flops'] / 1e6:.2f}", r["runtime"], r["batch"], f"{r['images_per_s']:,.0f}",
              f"{r['first_call_s']:.1f}"] for r in rows]
    gains = []
    for strategy in STRATEGIES:
        for batch in BATCH_SIZES:
            plain = [r for r in rows if r["strategy"] == strategy and r["batch"] == batch and r["runtime"] == ".pt2"]
            comp = [r for r in rows if r["strategy"] == strategy and r["batch"] == batch and r["runtime"] == COMPILED]
            if plain and comp:
                gains.append((strategy, batch, comp[0]["images_per_s"] / plain[0]["images_per_s"]))
    words = ""
    if gains:
        words = "Compiled against plain .pt2: " + "; ".join(f"{s} at batch {b} {g:.2f}x" for s, b, g in gains) + ".\n\n"
    return (words + "Each figure is the best of 3 rounds, each the median of repeated calls after warm-up, on random "
            "normal images (seed 1) in host memory, the copies to and from the GPU included. first call s: loading, "
            "and for the compiled runner compiling and recording its CUDA graphs, once per batch size.\n\n"
            + markdown_table(["strategy", "MFLOPs", "runtime", "batch", "images/s", "first call s"], table))


def in_short(results: dict[str, Any]) -> str:
    m = results["machine"]
    where = m.get("gpu", m["device"])
    parts = []
    training = results.get("training") or []
    by = {(r["strategy"], r["variant"]): r for r in training}
    copied, resident, bf16 = (label for label, _, _ in VARIANTS)
    ratios = [by[(s, copied)]["epoch_s"] / by[(s, resident)]["epoch_s"] for s in STRATEGIES
              if (s, copied) in by and (s, resident) in by]
    if ratios:
        parts.append(f"on one {where}, keeping the data on the GPU trains an epoch {statistics.median(ratios):.2f}x as fast "
                     "as copying each batch (median over the five strategies)")
    b = [by[(s, resident)]["epoch_s"] / by[(s, bf16)]["epoch_s"] for s in STRATEGIES if (s, resident) in by and (s, bf16) in by]
    if b:
        parts.append(f"bf16 autocast {statistics.median(b):.2f}x on top (median)")
    if ratios and b and max(statistics.median(ratios), statistics.median(b)) < 1.1:
        step_ms = statistics.median(1e3 * r["epoch_s"] / r["steps_per_epoch"] for r in training)
        parts.append(f"models this small are bound by kernel launches (a training step takes {step_ms:.0f} ms, median), "
                     "not by the batch copy or the arithmetic, so fp32 (the default) stays the better setting for them")
    inf = results.get("inference") or []
    comp = [r for r in inf if r["runtime"] == COMPILED and r["batch"] == BATCH_SIZES[0]]
    plain = {r["strategy"]: r for r in inf if r["runtime"] == ".pt2" and r["batch"] == BATCH_SIZES[0]}
    g = [r["images_per_s"] / plain[r["strategy"]]["images_per_s"] for r in comp if r["strategy"] in plain]
    if g:
        parts.append(f"predict --compile runs {min(g):.2f}-{max(g):.2f}x the images/s of the plain .pt2 at batch "
                     f"{BATCH_SIZES[0]}")
    return "**In short:** " + ("; ".join(parts) or "no figures") + "."


def render(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    gpu = f"{m['gpu']} ({m['gpu_memory_gib']} GiB), " if "gpu" in m else f"{m['device']}, "
    head = (f"Machine: {gpu}{m['cpus']} CPUs; torch {m['torch']}" + (f" (CUDA {m['cuda']})" if "cuda" in m else "")
            + f", Python {m['python']}. Date: {m['date']}. Command: `{command}`.")
    parts = [head, in_short(results), "### Training: data on the device, bf16",
             _training_text(results.get("training") or []),
             results.get("inference_error", "") and f"Inference not measured: {results['inference_error']}.",
             "### Inference: plain and compiled .pt2", _inference_text(results.get("inference") or [])]
    return "\n\n".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pbc28_argument(parser)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, help="training images (default: the whole split)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled runner")
    parser.add_argument("--json", type=Path, help="write the raw figures here as they are measured")
    parser.add_argument("--from-json", type=Path, help="render the section from these saved figures; measure nothing")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    command = own_command("bench_gpu_paths.py", argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        command = results.get("command", command)
    else:
        if skipped := gpu_skip_reason(args.data, needs_cuda=args.device == "cuda"):
            print(skipped)
            return 0
        results = {"machine": {**machine_record(), "device": args.device}, "command": command}

        def save(figures: dict[str, Any]) -> None:
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1))

        data = load_dataset(source="npz", path=args.data, image_size=28, train=args.train)
        with tempfile.TemporaryDirectory(prefix="cellsparse-gpu-paths-") as name:
            train_variants(data, Path(name), device=args.device, epochs=args.epochs, save=save, results=results)
            try:
                inference(Path(name), results["training"], device=args.device, compile_models=not args.no_compile,
                          save=save, results=results)
            except Exception as err:  # noqa: BLE001 - keep the training figures; say what failed
                results["inference_error"] = f"{type(err).__name__}: {err}"
                save(results)
    body = render(results, command)
    print(body)
    if not args.no_write:
        write_section("gpu_paths", "GPU: the device path of a trial, and compiled inference", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
