"""The throughput objective and the allocator: does a trial's figure depend on what ran before it?

glibc's malloc maps fresh pages for every block above its mmap threshold until a block that large
has been freed (``objectives.throughput.warm_allocator``). For each model this starts fresh
processes that each time the model with the objective (``measure_throughput``, the default
deployment: pt2, batch 64, 1 thread) first thing in the process, then run a batch of 256 through
three other models, and time it again. ``after / first`` near 1 means the figure does not depend on
the process's history. Processes alternate between the objective as it is and the objective with
``warm_allocator`` made a no-op (the ablation), so load changes reach both alike.

    python benchmarks/bench_allocator.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402
from bench_gflops import CHANNELS, CLASSES, CONFIGS, SIZE  # noqa: E402

MODELS = ("dense_cnn", "sparse_topk", "dense_vit")
VARIANTS = ("warm_allocator", "no warm-up (ablation)")


def worker(name: str, warm: bool) -> dict:
    """One fresh process: the objective's figure first thing, then after other work."""
    import torch

    sys.path.insert(0, str(ROOT))

    import objectives.throughput as tp
    from runner.engine.deploy import deployment_for
    from search_space import build_model, default_config
    from search_space.spec import DeploySpec

    if not warm:
        tp.warm_allocator = lambda: None
    deployment = deployment_for(DeploySpec())

    def model(strategy: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model({**default_config(strategy), **CONFIGS[strategy]}, CHANNELS, CLASSES, SIZE).eval()

    images = torch.rand(64, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    timed = model(name)
    first = tp.measure_throughput(timed, images, deployment).raw_images_per_s
    with torch.no_grad():
        for other in MODELS:
            model(other)(torch.rand(256, CHANNELS, SIZE, SIZE))
    after = tp.measure_throughput(timed, images, deployment).raw_images_per_s
    return {"model": name, "warm": warm, "first": first, "after": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per model and variant")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "WARM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "1")))
        return 0
    rows: list[dict] = []
    for i in range(args.repeats):
        for name in MODELS:
            for warm in ((True, False) if i % 2 == 0 else (False, True)):
                out = subprocess.run([sys.executable, __file__, "--worker", name, "1" if warm else "0"],
                                     check=True, capture_output=True, text=True, cwd=ROOT).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    body, ratio = [], {}
    for name in MODELS:
        for warm, label in zip((True, False), VARIANTS, strict=True):
            mine = [r for r in rows if r["model"] == name and r["warm"] == warm]
            ratios = [r["after"] / r["first"] for r in mine]
            ratio[(name, warm)] = statistics.median(ratios)
            body.append([name, label, f"{statistics.median(r['first'] for r in mine):,.0f}",
                         f"{statistics.median(r['after'] for r in mine):,.0f}",
                         f"{ratio[(name, warm)]:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"])
    table = markdown_table(["model", "objective", "first in the process (images/s)", "after other work (images/s)",
                            "after / first [range]"], body)
    short = ("**In short:** timed first in a fresh process and again after other work (pt2, batch 64, 1 thread), "
             "the objective's figure moved by " + ", ".join(f"{n} {ratio[(n, True)]:.2f}x" for n in MODELS)
             + " with `warm_allocator`, and by " + ", ".join(f"{n} {ratio[(n, False)]:.2f}x" for n in MODELS)
             + " without it (the ablation).")
    print(short + "\n\n" + table)
    if not args.no_write:
        text = (f"{stamp(own_command('bench_allocator.py'))}\n\n{short}\n\n{len(rows)} fresh processes, "
                f"{args.repeats} per model and variant, alternating; figures are the objective's raw median rate; "
                f"models are bench_gflops.py's configs at {SIZE} px, weights seeded 0. The other work: a batch of 256 "
                f"through {', '.join(MODELS)}.\n\n{table}\n")
        write_section("allocator", "The throughput objective and the allocator", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
