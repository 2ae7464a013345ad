"""Achieved GFLOP/s by head and channel width: how wide would a sparse design have to be to run at
half a dense convolution's rate?

bench_gflops.py's configs at batch 256 on 2 threads, with one width changed at a time: the
transformers' heads (``num_heads`` 4, 2, 1 of ``embed_dim`` 64: heads 16, 32 and 64 wide; cells64.yaml
searches 2 and 4) and TNet's backbone ``width`` (8 and 16, the space's range); bench_gflops.py's
configs are the narrow end of both. The dense ViT is the
reference: attention of that width with no selection at all. The same machinery as bench_gflops.py
(fresh worker processes, glibc's allocator pinned, every model timed in each round, ratios to
dense_cnn within a round, then the median).

    python benchmarks/bench_widths.py [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402
from bench_gflops import BASE, CONFIGS, RUNTIMES, run_round, summarise, worker  # noqa: E402

BATCH = 256
HEADS = (4, 2, 1)
TNET_WIDTHS = (8, 16)


def variants() -> dict[str, tuple[str, dict]]:
    """label -> (strategy, config overrides): dense_cnn as it is, then each width."""
    out: dict[str, tuple[str, dict]] = {BASE: (BASE, CONFIGS[BASE])}
    for name in ("dense_vit", "sparse_topk", "span_pyramid"):
        dim = CONFIGS[name]["embed_dim"]
        for heads in HEADS:
            label = f"{name}, {heads} head{'s' if heads > 1 else ''} of {dim // heads}"
            out[label] = (name, {**CONFIGS[name], "num_heads": heads})
    for width in TNET_WIDTHS:
        out[f"tnet_traversal, width {width}"] = ("tnet_traversal", {**CONFIGS["tnet_traversal"], "width": width})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.4, help="time spent per figure and round")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        args.json.write_text(json.dumps(worker(args.worker, args.threads, args.seconds, variants(), (BATCH,))))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-widths-") as tmp:
        rounds = []
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            rounds.append(run_round(ROOT, Path(tmp), args, script=Path(__file__)))
    rows = {(r["strategy"], r["runtime"]): r for r in summarise(rounds)}
    body = [[label, f"{rows[(label, RUNTIMES[0])]['mflops']:.2f}"]
            + [f"{rows[(label, rt)]['gflops']:.1f} ({rows[(label, rt)]['ratio']:.2f}x "
               f"[{rows[(label, rt)]['ratio_lo']:.2f}-{rows[(label, rt)]['ratio_hi']:.2f}])" for rt in RUNTIMES]
            for label in variants()]
    table = markdown_table(["model", "MFLOPs/image"] + [f"{rt}: GFLOP/s (vs {BASE} [range])" for rt in RUNTIMES], body)

    def best(strategy: str, runtime: str) -> str:
        label = max((lb for lb in variants() if lb.startswith(strategy + ",")), key=lambda lb: rows[(lb, runtime)]["ratio"])
        return f"{rows[(label, runtime)]['ratio']:.2f}x ({label.split(', ', 1)[1]})"

    short = (f"**In short:** at batch {BATCH} on {args.threads} threads, the widest setting of each design reached, as a "
             f"share of {BASE}'s GFLOP/s: " + "; ".join(
                 f"{name} {', '.join(f'{rt} {best(name, rt)}' for rt in RUNTIMES)}"
                 for name in ("sparse_topk", "span_pyramid", "tnet_traversal", "dense_vit")) + " (target: 0.5x).")
    print(short + "\n\n" + table)
    if not args.no_write:
        text = (f"{stamp(own_command('bench_widths.py'))}\n\n{short}\n\nbench_gflops.py's configs (64 px, eval mode, "
                f"weights seeded 0) with one width changed; median over {args.rounds} interleaved rounds, each in a fresh "
                f"process with glibc's allocator pinned; the ratio to {BASE} is taken within each round, then the median "
                f"(range over rounds in brackets).\n\n{table}\n")
        write_section("gflops_widths", "Achieved GFLOP/s by head and channel width", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
