"""Achieved GFLOP/s per strategy: do sparse forwards run at a dense convolution's rate?

FLOPs are the objective's count (``objectives.count_flops``); a model that executes them at a low
rate is slower than its FLOPs say. For each strategy, one representative config of the cells64
space (``CONFIGS``, built at 64 px, 3 channels, 5 classes, eval mode, weights seeded 0), this
times torch eager and onnxruntime (the ONNX file ``runner.export`` writes: ``torch.export`` with a
dynamic batch, the dynamo ONNX exporter) at batch 1 and 256 with 2 threads, and reports images/s,
GFLOP/s (FLOPs per image x images/s) and the ratio to dense_cnn's GFLOP/s on the same runtime and
batch, measured in the same round.

    python benchmarks/bench_gflops.py                        # this tree only
    python benchmarks/bench_gflops.py --before 1a2b3c4       # and the models of an older commit

Noise: rounds interleave every model, runtime and batch size (and, with ``--before``, the two
trees: each round runs the older tree's models in a process of their own, then this tree's), so a
burst of other load hits them alike. Each figure is the median over rounds of a round's median
call time; the spread is the range over rounds; ratios are taken within a round, then the median.

The allocator: glibc serves an allocation above its mmap threshold with fresh pages, and raises the
threshold only once such a block has been freed, so in torch eager a model's time at batch 256
depended on what had run before it in the process (dense_cnn, timed first in each round, ran at
about half the rate it reached once the other models had run). The workers pin glibc's mmap and
trim thresholds (``PINNED_MALLOC``), so every model runs warm from its first call whatever ran
before; ``--malloc-default`` also times this tree under glibc's defaults, side by side.
onnxruntime allocates from its own arena and is not affected.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

SIZE, CHANNELS, CLASSES = 64, 3, 5
BATCHES = (1, 256)
RUNTIMES = ("torch eager", "onnxruntime")
BASE = "dense_cnn"
#: glibc's thresholds, pinned in the worker processes (see the module docstring); other C libraries ignore them.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
DEFAULT_MALLOC_LABEL = "this tree, glibc's default malloc"
REFERENCE = "dense_vit"  # a dense transformer: the rate attention of these widths reaches without selection
#: One config per strategy from cells64.yaml's ranges (the rest: the strategy's defaults).
CONFIGS: dict[str, dict] = {
    "dense_cnn": {"width": 16, "stages": 4, "stem_stride": 2},
    "dense_vit": {"patch_size": 8, "embed_dim": 64, "num_heads": 4, "depth": 2},
    "sparse_topk": {"k_fraction": 0.04, "token_content": "patch3", "coarse_channels": 8, "coarse_stride": 1,
                    "embed_dim": 64, "num_heads": 4, "depth": 2, "k_rule": "fixed"},
    "span_pyramid": {"patch_size": 4, "keep_score": "foreground", "patch_embed": "linear", "keep_fraction": 0.3,
                     "window": 4, "embed_dim": 64, "num_heads": 4, "depth": 2, "k_rule": "fixed"},
    "tnet_traversal": {"base_resolution": 16, "grid_size": 5, "overlap": 0.4, "regions": 2, "width": 8, "stages": 3,
                       "encoder": "residual", "pooling": "mean", "k_rule": "fixed"},
}


# ----- one round, in a worker process (the tree whose models it times is on its PYTHONPATH) -----------
def _time_ms(run, x, *, seconds: float) -> float:  # noqa: ANN001
    """Median ms per call after one warm-up call, at least 3 calls, about ``seconds`` of calls."""
    run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 50):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def worker(cache: Path, threads: int, seconds: float, variants: dict[str, tuple[str, dict]] | None = None,
           batches: tuple[int, ...] = BATCHES) -> list[dict]:
    """One round over every model, runtime and batch size: rows of (strategy, runtime, batch, ms, flops).

    ``variants``: label -> (strategy, config overrides), by default ``CONFIGS`` under their own names;
    rows carry the label as their strategy."""
    import torch

    from objectives import count_flops
    from runner.export.parity import eager_runner
    from search_space import build_model, default_config

    try:
        from runner.engine.artefacts import onnx_runner
        from runner.engine.exporters import save_onnx, to_exported_program
    except ImportError:  # a tree from before the engine had its own folder (--before)
        from runner.artefacts import onnx_runner
        from runner.export.exporters import save_onnx, to_exported_program

    torch.set_num_threads(threads)
    images = torch.rand(max(batches), CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    rows = []
    variants = variants or {name: (name, overrides) for name, overrides in CONFIGS.items()}
    for i, (label, (name, overrides)) in enumerate(variants.items()):
        torch.manual_seed(0)
        model = build_model({**default_config(name), **overrides}, CHANNELS, CLASSES, SIZE).eval()
        flops = count_flops(model, images[:16])
        onnx_path = cache / f"model{i}.onnx"
        if not onnx_path.exists():  # exported once per tree; later rounds reuse it
            save_onnx(to_exported_program(model, images[:8]), onnx_path, {})
        runners = {"torch eager": eager_runner(model), "onnxruntime": onnx_runner(onnx_path, threads=threads)}
        for runtime in RUNTIMES:
            for batch in batches:
                ms = _time_ms(runners[runtime], images[:batch].numpy(), seconds=seconds)
                rows.append({"strategy": label, "runtime": runtime, "batch": batch, "ms": ms, "flops": flops})
    return rows


# ----- the driver: rounds, trees, figures --------------------------------------------------------------
def extract_tree(rev: str, into: Path) -> Path:
    """The project's files at ``rev`` (``git archive``), unpacked into ``into``."""
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_round(tree: Path, cache: Path, args: argparse.Namespace, *, pinned: bool = True,
              script: Path = Path(__file__)) -> list[dict]:
    """One round in a fresh process: ``script --worker`` with ``tree`` on its PYTHONPATH."""
    out = cache / "round.json"
    env = {key: value for key, value in os.environ.items() if key not in PINNED_MALLOC}
    env.update(PYTHONPATH=str(tree), **(PINNED_MALLOC if pinned else {}))
    subprocess.run([sys.executable, str(script.resolve()), "--worker", str(cache), "--threads", str(args.threads),
                    "--seconds", str(args.seconds), "--json", str(out)], check=True, env=env, cwd=tree)
    return json.loads(out.read_text())


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """Per (strategy, runtime, batch): median images/s and GFLOP/s, their range, the median ratio to BASE."""
    keyed: dict[tuple, list[dict]] = {}
    for rows in rounds:
        base = {(r["runtime"], r["batch"]): r for r in rows if r["strategy"] == BASE}
        for r in rows:
            rate = r["batch"] / r["ms"] * 1e3
            gflops = r["flops"] * rate / 1e9
            b = base[(r["runtime"], r["batch"])]
            ratio = gflops / (b["flops"] * b["batch"] / b["ms"] * 1e3 / 1e9)
            keyed.setdefault((r["strategy"], r["runtime"], r["batch"]), []).append(
                {"rate": rate, "gflops": gflops, "ratio": ratio, "flops": r["flops"]})
    out = []
    for (name, runtime, batch), values in keyed.items():
        g, ratios = [v["gflops"] for v in values], [v["ratio"] for v in values]
        out.append({"strategy": name, "runtime": runtime, "batch": batch, "mflops": values[0]["flops"] / 1e6,
                    "images_per_s": statistics.median(v["rate"] for v in values),
                    "gflops": statistics.median(g), "gflops_lo": min(g), "gflops_hi": max(g),
                    "ratio": statistics.median(ratios), "ratio_lo": min(ratios), "ratio_hi": max(ratios)})
    return out


def table(results: dict[str, list[dict]]) -> str:
    labels = list(results)
    header = ["strategy", "runtime", "batch"]
    for label in labels:
        header += [f"MFLOPs/image ({label})", f"images/s ({label})", f"GFLOP/s [range] ({label})",
                   f"vs {BASE} [range] ({label})"]
    index = {label: {(r["strategy"], r["runtime"], r["batch"]): r for r in rows} for label, rows in results.items()}
    body = []
    for name in CONFIGS:
        for runtime in RUNTIMES:
            for batch in BATCHES:
                line: list[object] = [name, runtime, batch]
                for label in labels:
                    r = index[label][(name, runtime, batch)]
                    line += [f"{r['mflops']:.2f}", f"{r['images_per_s']:,.0f}",
                             f"{r['gflops']:.2f} [{r['gflops_lo']:.2f}-{r['gflops_hi']:.2f}]",
                             f"{r['ratio']:.2f}x [{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}]"]
                body.append(line)
    return markdown_table(header, body)


def in_short(results: dict[str, list[dict]]) -> str:
    """Per sparse strategy at batch 256: its GFLOP/s as a share of dense_cnn's, per runtime (and tree),
    and the dense ViT's beside them: the rate a dense transformer of these widths reaches."""

    def shares(name: str) -> str:
        cells = []
        for runtime in RUNTIMES:
            key = (name, runtime, 256)
            figures = [f"{next(r['ratio'] for r in rows if (r['strategy'], r['runtime'], r['batch']) == key):.2f}x"
                       for rows in results.values()]
            cells.append(f"{runtime} " + " -> ".join(figures))
        return ", ".join(cells)

    default_malloc = results.pop(DEFAULT_MALLOC_LABEL, None)
    sparse = [n for n in CONFIGS if n not in (BASE, REFERENCE)]
    text = (f"**In short:** at batch 256 on 2 threads, each sparse strategy's achieved GFLOP/s as a share of "
            f"{BASE}'s ({' -> '.join(results)}): " + "; ".join(f"{n} {shares(n)}" for n in sparse)
            + f" (target: at least 0.5x). For reference, {REFERENCE}: {shares(REFERENCE)}.")
    if default_malloc is not None:
        rate = {(r["strategy"], r["runtime"]): r for r in default_malloc if r["batch"] == 256}
        pinned = {(r["strategy"], r["runtime"]): r for r in list(results.values())[-1] if r["batch"] == 256}
        base = (BASE, "torch eager")
        text += (f" Under glibc's default malloc, in the same rounds, {BASE} in torch eager ran at "
                 f"{rate[base]['gflops']:.0f} GFLOP/s against {pinned[base]['gflops']:.0f} pinned, which put the "
                 "sparse strategies at " + ", ".join(f"{n} {rate[(n, 'torch eager')]['ratio']:.2f}x" for n in sparse)
                 + " of it.")
    return text + " Ratios moved by up to a third between runs on this shared machine (the table's ranges are over rounds)."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="also time the models of this git revision, interleaved")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.4, help="time spent per figure and round")
    parser.add_argument("--malloc-default", action="store_true",
                        help="also time this tree under glibc's default malloc thresholds, interleaved")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        args.json.write_text(json.dumps(worker(args.worker, args.threads, args.seconds)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-gflops-") as tmp:
        trees: dict[str, Path] = {}
        if args.before:
            trees[f"before, {args.before}"] = extract_tree(args.before, Path(tmp) / "before")
        trees["this tree" if not args.before else "after"] = ROOT
        if args.malloc_default:
            trees[DEFAULT_MALLOC_LABEL] = ROOT
        caches = {label: Path(tmp) / f"cache{i}" for i, label in enumerate(trees)}
        for cache in caches.values():
            cache.mkdir()
        rounds: dict[str, list[list[dict]]] = {label: [] for label in trees}
        for i in range(args.rounds):
            for label, tree in trees.items():
                print(f"round {i + 1}/{args.rounds}: {label}", flush=True)
                rounds[label].append(run_round(tree, caches[label], args, pinned=label != DEFAULT_MALLOC_LABEL))
    results = {label: summarise(r) for label, r in rounds.items()}
    text = table(results)
    short = in_short(dict(results))
    print(short + "\n\n" + text)
    if not args.no_write:
        body = (f"{stamp(own_command('bench_gflops.py'))}\n\n{short}\n\n"
                f"One config per strategy from cells64.yaml's ranges (`CONFIGS` in the script), {SIZE} px, "
                f"{CHANNELS} channels, {CLASSES} classes, eval mode, on uniform random images. FLOPs per image are "
                f"the objective's count on a batch of 16. Each runtime at {args.threads} threads (torch intra-op, "
                f"onnxruntime intra-op with one inter-op thread), glibc's mmap and trim thresholds pinned "
                f"(`PINNED_MALLOC`: every model runs warm from its first call) unless a column says otherwise. "
                f"Figures: median over {args.rounds} interleaved "
                f"rounds of each round's median call time; GFLOP/s range over rounds in brackets; the ratio to "
                f"{BASE} is taken within each round, then the median.\n\n{text}\n")
        write_section("gflops", "Achieved GFLOP/s per strategy (FLOPs against measured throughput)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
