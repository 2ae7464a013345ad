"""Deployment throughput: images per second of a run's knee model and its best dense baseline.

    python benchmarks/bench_export.py runs/cells
    python benchmarks/bench_export.py runs/cells --threads 1,2 --batch-sizes 1,256

For the knee of the accuracy/FLOPs front (``reports.picks.pick_trial(..., "knee")``) and the most
accurate complete, feasible dense trial (dense_cnn or dense_vit), rebuilt from the run directory
exactly as ``runner.export`` rebuilds them, this times on the CPU:

- ``onnxruntime``: the ONNX file the exporter writes (dynamo exporter, onnxruntime's default
  graph optimisations), with the given intra-op threads;
- ``torch eager``: the PyTorch model itself, ``torch.no_grad``;
- ``torch .pt2``: the ``torch.export`` program, loaded back with ``torch.export.load``.

at each batch size (default 1 and 256) and thread count (default 1 and every core), on random
normal inputs of the model's shape (the cost of these models does not depend on the pixel values:
k is fixed at inference). Each figure is the best of three rounds, each the median of repeated
calls after two warm-up calls; the rounds interleave the settings, so on a shared machine a burst
of other work does not land on one setting only.
Then it says how far the knee model's best figure is from 10,000 cells per second, the rate an
imaging flow cytometer asks for. The table goes to its section of ``docs/benchmarks.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

TARGET = 10_000  # cells per second
ROUNDS = 3  # each figure is the best of this many rounds' medians


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def describe_run(run_dir: Path) -> str:
    """One sentence on what the run is and how it was made (from space.yaml and run.json)."""
    from cellsparse.rundir import read_run

    run = read_run(run_dir)
    data = run.space.data
    complete = int((run.trials["state"] == "COMPLETE").sum())
    what = f"{data.get('source', '?')} {data.get('modality', '')} data at {data.get('image_size', '?')} px".replace("  ", " ")
    command = run.info.get("command")
    return (f"Run `{run_dir}` (space `{run.name}`, {complete} complete trials, {what}"
            + (f"; made with `{command}`" if command else "") + ").")


def pick_models(run_dir: Path) -> list[tuple[str, int]]:
    """[("knee", n), ("best dense", m)]: the trials to time (the dense one when the run has one)."""
    from cellsparse.rundir import eligible_mask, read_run
    from reports.picks import most_accurate, pick_trial
    from search_space.strategies import get_strategy, strategy_names

    run = read_run(run_dir)
    chosen = [("knee", pick_trial(run.trials, run.directions, "knee"))]
    dense_names = [n for n in strategy_names() if not get_strategy(n).sparse]
    dense = run.trials[run.trials["strategy"].isin(dense_names)]
    dense = dense[eligible_mask(dense, run.objectives).to_numpy()]
    number = most_accurate(dense, run.directions) if not dense.empty else None
    if number is not None:
        chosen.append(("best dense", number))
    return chosen


def time_model(trial_dir: Path, workdir: Path, *, threads: list[int], batch_sizes: list[int]) -> tuple[dict, list[dict]]:
    """(what the trial is, one row per runtime x threads x batch size)."""
    from runner.engine.artefacts import onnx_runner, pt2_runner
    from runner.engine.checkpoint import load_trained
    from runner.engine.exporters import save_onnx, save_pt2, to_exported_program
    from runner.export.parity import eager_runner, time_batches

    trained = load_trained(trial_dir)
    model = trained.model
    c, s = int(trained.meta["in_channels"]), int(trained.meta["image_size"])
    example = torch.randn(8, c, s, s, generator=torch.Generator().manual_seed(0))
    program = to_exported_program(model, example)
    onnx_path, pt2_path = workdir / f"{trial_dir.name}.onnx", workdir / f"{trial_dir.name}.pt2"
    save_onnx(program, onnx_path, {})
    save_pt2(program, pt2_path, "{}")
    about = {
        "trial": trained.number,
        "strategy": trained.strategy,
        "accuracy": trained.metrics.get("val_accuracy", trained.metrics.get("accuracy")),
        "flops": trained.metrics.get("flops"),
        "size": f"{c}x{s}x{s}",
    }
    best: dict[tuple[str, int, int], float] = {}
    for _ in range(ROUNDS):  # rounds interleave the settings, so a burst of other load hits them alike
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            runners = {"onnxruntime": onnx_runner(onnx_path, threads=n_threads), "torch eager": eager_runner(model),
                       "torch .pt2": pt2_runner(pt2_path)}
            for runtime, run in runners.items():
                for batch in batch_sizes:
                    x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(1)).numpy()
                    rate = batch / time_batches(run, x, min_time_s=0.5, max_repeats=50) * 1e3
                    key = (runtime, n_threads, batch)
                    best[key] = max(best.get(key, 0.0), rate)
    rows = [{"runtime": r, "threads": t, "batch": b, "images_per_s": v} for (r, t, b), v in best.items()]
    return about, rows


def _setting(row: dict) -> str:
    return f"{row['runtime']}, {row['threads']} thread{'s' if row['threads'] != 1 else ''}, batch {row['batch']}"


def _best(rows: list[dict], batch: int | None = None) -> dict:
    """The fastest row (of one batch size, when given): the model's best configuration on this machine."""
    return max((r for r in rows if batch is None or r["batch"] == batch), key=lambda r: r["images_per_s"])


def _model(about: dict) -> str:
    acc = about.get("accuracy")
    return about["strategy"] + ("" if acc is None else f", val {acc:.2f}")


def in_short(results: list[tuple[str, dict, list[dict]]]) -> str:
    """The section's plain-words paragraph: the knee model's best rate against 10,000 cells/s and against the
    best dense baseline (at best, and at the smallest batch), built from this run's timings."""
    _, knee, knee_rows = results[0]
    best = _best(knee_rows)
    rate = best["images_per_s"]
    text = (f"The knee model ({_model(knee)}) reaches {rate:,.0f} images/s at best ({_setting(best)}): "
            f"{rate / TARGET:.2f}x the {TARGET:,} cells/s target ({'above' if rate >= TARGET else 'short of'} it).")
    if len(results) < 2:
        return "**In short:** " + text + " The run has no complete dense trial to compare it with."
    _, dense, dense_rows = results[1]

    def against(mine: dict, theirs: dict) -> str:
        ratio = mine["images_per_s"] / theirs["images_per_s"]
        return f"{'faster' if ratio >= 1 else 'slower'} ({ratio:.2f}x its rate)"

    dense_best = _best(dense_rows)
    text += (f" The best dense model ({_model(dense)}) reaches {dense_best['images_per_s']:,.0f} at best "
             f"({_setting(dense_best)}), so the knee model is {against(best, dense_best)}.")
    small = min(r["batch"] for r in knee_rows)
    if small != best["batch"] and any(r["batch"] == small for r in dense_rows):
        knee_small, dense_small = _best(knee_rows, small), _best(dense_rows, small)
        text += (f" At batch {small} it is {against(knee_small, dense_small)}: {knee_small['images_per_s']:,.0f} "
                 f"images/s against {dense_small['images_per_s']:,.0f}.")
    return "**In short:** " + text


def render(run_dir: Path, results: list[tuple[str, dict, list[dict]]], *, threads: list[int], batch_sizes: list[int],
           command: str) -> str:
    lines = [
        "# Export throughput: knee model vs best dense baseline",
        "",
        describe_run(run_dir) + f" Images per second on the CPU: the best of {ROUNDS} rounds, each the median of "
        "repeated calls after warm-up, on random normal inputs of the model's shape (k is fixed at inference, so "
        "the cost does not depend on pixel values).",
        "",
        in_short(results),
        "",
        "| model | trial | strategy | val acc | FLOPs/image | runtime | threads | "
        + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
        "|---|---:|---|---:|---:|---|---:|" + "---:|" * len(batch_sizes),
    ]
    for label, about, rows in results:
        for runtime in ("onnxruntime", "torch eager", "torch .pt2"):
            for n_threads in threads:
                cells = []
                for b in batch_sizes:
                    hit = [r for r in rows if (r["runtime"], r["threads"], r["batch"]) == (runtime, n_threads, b)]
                    cells.append(f"{hit[0]['images_per_s']:,.0f}" if hit else "-")
                acc = "n/a" if about["accuracy"] is None else f"{about['accuracy']:.3f}"
                flops = "n/a" if about["flops"] is None else f"{about['flops']:.3g}"
                lines.append(f"| {label} | {about['trial']} | {about['strategy']} | {acc} | {flops} | {runtime} | "
                             f"{n_threads} | " + " | ".join(cells) + " |")
    knee_rows = results[0][2]
    best = _best(knee_rows)
    rate = best["images_per_s"]
    verdict = (f"reaches {rate:,.0f} images/s ({rate / TARGET:.2f}x the 10,000 cells/s target)" if rate >= TARGET
               else f"reaches {rate:,.0f} images/s, {TARGET / rate:.1f}x short of 10,000 cells/s "
               f"({TARGET - rate:,.0f} images/s missing)")
    lines += [
        "",
        f"**Knee model vs 10,000 cells/s:** on this machine its best configuration ({best['runtime']}, "
        f"{best['threads']} thread(s), batch {best['batch']}) {verdict}. The threads = 1 rows are per-core "
        "figures: one process per free core should multiply them (not measured here).",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} logical CPUs, load average {_load()} (other work on the machine "
        f"slows and scatters the figures); Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {_ort_version()}. Measured {dt.date.today().isoformat()} with `{command}`.",
        "",
    ]
    return "\n".join(lines)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_export.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<name>)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated thread counts")
    parser.add_argument("--batch-sizes", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table to this file instead of its section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    from cellsparse.errors import UserError

    threads = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    command = "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        picks = pick_models(args.run_dir)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, number in picks:
                print(f"timing {label}: trial {number}", flush=True)
                about, rows = time_model(args.run_dir / "trials" / str(number), Path(tmp), threads=threads,
                                         batch_sizes=batch_sizes)
                results.append((label, about, rows))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = render(args.run_dir, results, threads=threads, batch_sizes=batch_sizes, command=command)
    if args.out is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _doc import write_section

        title, _, body = text.partition("\n")
        write_section("export", title.lstrip("# ").strip(), body)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(f".{args.out.name}.tmp")
        tmp_out.write_text(text, encoding="utf-8")
        os.replace(tmp_out, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
