"""Re-run every benchmark in benchmarks/, one after the other, then write the "summary" section at the
top of docs/benchmarks.md.

    python benchmarks/run_all.py                 # everything: about 2.5 hours on 2 CPU cores (the pbc28 search ~1 h)
    python benchmarks/run_all.py --dry-run       # print the commands, run nothing
    python benchmarks/run_all.py --only models data --summary
    python benchmarks/run_all.py --summary-only  # rewrite the summary from the sections as they are

Order (each one a separate process, so one heavy job at a time; each writes its own section):

1. ``bench_models.py``            model cost per strategy (FLOPs against latency)
   ``bench_gflops.py``            achieved GFLOP/s per strategy, torch eager and onnxruntime (about 3 minutes)
   ``bench_widths.py``            the same by head and channel width: what width reaches half dense_cnn's rate (~2 minutes)
   ``bench_selection.py``         where each sparse strategy looks: share of its selection on the cell,
                                  beside the ablation of its selection signal (about 5 minutes)
   ``bench_adaptive_k.py``        sparse_topk's loss_trend k against fixed k, 3 seeds (about 5 minutes)
   ``bench_tnet_encoders.py``     TNet's encoder (residual, plain) by depth and width on 64-px cells (about 10 minutes)
   ``bench_throughput.py``        the throughput objective: a 14-trial cells64 search with accuracy and throughput,
                                  re-measured in a separate process; its cost per trial (about 15 minutes)
   ``bench_allocator.py``         the objective timed first in fresh processes and after other work, with and
                                  without its allocator warm-up (about 2 minutes)
2. ``bench_data.py --accuracy``   data generation and loading, small-CNN accuracy per modality
   ``bench_field_data.py``        the white-cell finder against hand-drawn boxes, and each real field set's
                                  build (skipped, with a message, without the clones: $WBC_CLONE, $PBC_CLONE)
   ``bench_headroom.py``          the same dense CNN at native size, 2x and 4x shrinks and (synthetic) on the
                                  ground-truth crop: synthetic fields and the real field sets at $WBC_FIELDS_NPZ
                                  and $PBC360_NPZ where they exist (3 seeds; about 30 minutes per set)
   ``bench_fields512.py``         a 512-px search, export and predict end to end, memory and time (~15 minutes)
   ``bench_fields_goal.py``       the goal on fields: every design (dense native, shrinks, ViT, each sparse design,
                                  the ground-truth crop) on 256-px synthetic fields, the headroom's dense runs
                                  reused, and on $WBC_FIELDS_NPZ where it exists; throughput side by side (~1.5 h)
   ``bench_adaptive_k_fields.py`` loss_trend against fixed k and a schedule on 128-px fields, 5 seeds (~15 minutes)
   ``bench_regime.py``            the regime map: sparse against dense at equal FLOPs as the target's share of
                                  the frame goes from 42% to 1% (3 seeds; ~40 minutes)
3. ``bench_report.py``            report size and build time
   ``bench_hypervolume.py``       hypervolume for 2-4 objectives against brute force and the previous slicing
4. ``bench_overhead.py``          framework overhead and parallel speed-up
5. ``bench_search_efficiency.py`` hypervolume per sampler (random, TPE, NSGA-II)
   ``bench_early_stopping.py``    hypervolume against time: plain Ray Tune + OptunaSearch, this project
                                  without early stopping, with asha, with moasha (5 seeds; hours)
6. ``bench_real_cells.py``        a pbc28 search (skipped, with a message, where pbc28.npz is absent), and
                                  the model the bar is judged on re-trained with 3 more seeds;
                                  ``--pbc28-run DIR`` reads a finished run instead
7. ``bench_sparse_vs_dense.py``   a 64-px synthetic search, sparse against dense on its front;
                                  ``--cells64-run DIR`` reads a finished run instead
   ``bench_fronts.py``            hypervolume per strategy and the sparse-vs-dense goal for that cells64 run
                                  (give it more ``--run LABEL=DIR`` to compare versions side by side)
   ``bench_goal.py``              the goal with a search per strategy, all five: on cells64 16 trials each,
                                  on rbc64 12 each (skipped without its data): ~2 hours
8. ``bench_export.py RUN``        export throughput; RUN is a short cells.yaml search made first
                                  (``--export-run DIR`` reuses a run directory instead)
9. ``bench_gpu.py``               the real-cells search, fractional-GPU packing and exported-model
                                  throughput on CUDA (skipped, with a message, where torch sees no GPU
                                  or pbc28.npz is absent; its section then stays as it was)
   ``bench_gpu_paths.py``         a trial's device path on CUDA (data on the GPU, bf16) and compiled .pt2
                                  inference, per strategy (skipped like bench_gpu.py)
10. ``bench_reliability.py``      a 200-trial soak (driver memory per trial), 10 kill -9 / --resume
                                  cycles per backend, hostile and careless input (about 15 minutes)

A benchmark that fails is reported and the rest still run; the exit status is 1 if any failed.
The summary lists, per section, what ran, how long it took, and what the section says in plain words
(the paragraph each script starts with ``**In short:**``, computed from its own figures), so it says
in a few lines what the numbers say; it is placed right after the header.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from _doc import DOC, HEADER, own_command, stamp, write_section  # noqa: E402

PY = sys.executable
STRATEGIES = ("span_pyramid", "sparse_topk", "tnet_traversal", "dense_cnn", "dense_vit")


def plan(export_run: Path | None, tmp: Path, pbc28_run: Path | None = None,
         cells64_run: Path | None = None) -> list[tuple[str, list[list[str]]]]:
    """(section name, commands) in the order they run; commands run from the project root."""
    cells_run = export_run or tmp / "runs" / "cells"
    make_cells = [] if export_run else [[PY, "-m", "runner.search", "--space", "search_space/cells.yaml",
                                         "--trials", "10", "--backend", "optuna", "--out", str(cells_run)]]
    return [
        ("models", [[PY, "benchmarks/bench_models.py"]]),
        ("gflops", [[PY, "benchmarks/bench_gflops.py"]]),
        ("gflops_widths", [[PY, "benchmarks/bench_widths.py"]]),
        ("selection", [[PY, "benchmarks/bench_selection.py"]]),
        ("adaptive_k", [[PY, "benchmarks/bench_adaptive_k.py"]]),
        ("tnet_encoders", [[PY, "benchmarks/bench_tnet_encoders.py"]]),
        ("throughput", [[PY, "benchmarks/bench_throughput.py", "--out", str(tmp / "runs" / "throughput")]]),
        ("allocator", [[PY, "benchmarks/bench_allocator.py"]]),
        ("data", [[PY, "benchmarks/bench_data.py", "--accuracy"]]),
        ("field_data", [[PY, "benchmarks/bench_field_data.py"]]),
        ("headroom", [[PY, "benchmarks/bench_headroom.py", "--sets", "fields", *real_field_sets(), "--epochs", "15",
                       "--jobs", "2", "--out", str(tmp / "headroom.json")]]),
        ("fields512", [[PY, "benchmarks/bench_fields512.py"]]),
        ("goal_fields", fields_goal(tmp)),
        ("adaptive_k_fields", [[PY, "benchmarks/bench_adaptive_k_fields.py"]]),
        ("regime", [[PY, "benchmarks/bench_regime.py"]]),
        ("report", [[PY, "benchmarks/bench_report.py"]]),
        ("hypervolume", [[PY, "benchmarks/bench_hypervolume.py"]]),
        ("overhead", [[PY, "benchmarks/bench_overhead.py", "--trial-s", "10", "--trials", "6"]]),
        ("search_efficiency", [[PY, "benchmarks/bench_search_efficiency.py"]]),
        ("early_stopping", [[PY, "benchmarks/bench_early_stopping.py", "--json", str(tmp / "early_stopping.json")]]),
        ("real_cells", [[PY, "benchmarks/bench_real_cells.py", "--reseed", "3"]
                        + (["--run-dir", str(pbc28_run)] if pbc28_run else ["--out", str(tmp / "runs" / "pbc28")])]),
        ("sparse_vs_dense", [[PY, "benchmarks/bench_sparse_vs_dense.py", "--run-dir", str(cells64_run)] if cells64_run else
                             [PY, "benchmarks/bench_sparse_vs_dense.py", "--out", str(tmp / "runs" / "cells64")]]),
        ("fronts_cells64", [[PY, "benchmarks/bench_fronts.py", "--space", "cells64", "--run",
                             f"this version={cells64_run or tmp / 'runs' / 'cells64'}"]]),
        *[(f"goal_{space}", [[PY, "benchmarks/bench_goal.py", "--space", space, "--strategies", *strategies,
                              "--trials", trials, "--out", str(tmp / "runs" / "goal"), "--throughput"]])
          for space, strategies, trials in (("cells64", STRATEGIES, "16"), ("rbc64", STRATEGIES, "12"))],
        ("export", make_cells + [[PY, "benchmarks/bench_export.py", str(cells_run)]]),
        ("gpu", [[PY, "benchmarks/bench_gpu.py"]]),
        ("gpu_paths", [[PY, "benchmarks/bench_gpu_paths.py"]]),
        ("reliability", [[PY, "benchmarks/bench_reliability.py"]]),
    ]


def fields_goal(tmp: Path) -> list[list[str]]:
    """The goal on synthetic fields (the headroom's dense runs reused) and on the real smear windows at
    $WBC_FIELDS_NPZ where they exist, then one section from both."""
    goal = [PY, "benchmarks/bench_fields_goal.py", "--no-write"]
    commands = [[*goal, "--headroom", str(tmp / "headroom.json"), "--out", str(tmp / "goal_fields.json")]]
    saved = [str(tmp / "goal_fields.json")]
    wbc = os.environ.get("WBC_FIELDS_NPZ")
    if wbc and Path(wbc).is_file():
        commands.append([*goal, "--set", f"npz:{wbc}", "--train", "1500", "--epochs", "12", "--out", str(tmp / "goal_wbc.json")])
        saved.append(str(tmp / "goal_wbc.json"))
    return [*commands, [PY, "benchmarks/bench_fields_goal.py", "--results", *saved]]


def real_field_sets() -> list[str]:
    """The real field sets bench_headroom measures beside the synthetic fields: those built where
    $WBC_FIELDS_NPZ and $PBC360_NPZ point (README, "Real field data")."""
    paths = [os.environ.get(name) for name in ("WBC_FIELDS_NPZ", "PBC360_NPZ")]
    return [f"npz:{p}" for p in paths if p and Path(p).is_file()]


def sections(text: str) -> dict[str, tuple[str, str]]:
    """name -> (title, body) of every section of docs/benchmarks.md."""
    found = {}
    for m in re.finditer(r"<!-- bench:(\w+) -->\n## (.*?)\n(.*?)<!-- /bench:\1 -->", text, re.S):
        found[m.group(1)] = (m.group(2).strip(), m.group(3))
    return found


def key_sentences(body: str, limit: int = 3) -> list[str]:
    """What a section says in plain words: its ``**In short:**`` paragraph, else its bold verdicts."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    short = [p.replace("**In short:**", "").strip() for p in paras if p.startswith("**In short:**")]
    if short:
        return short[:1]
    return [p for p in paras if "**" in p and not p.startswith("|")][:limit]


def write_summary(status: dict[str, str], command: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    found = sections(text)
    lines = [stamp(command), ""]
    if not torch.cuda.is_available():
        where = " except the GPU section's, measured on the GPU machine it names" if "gpu" in found else ""
        lines += [f"No GPU on this machine: every figure below is from its CPUs{where}.", ""]
    if status:
        lines += ["This run: " + "; ".join(f"{k} {v}" for k, v in status.items()) + ".", ""]
    for name, (title, body) in found.items():
        if name == "summary":
            continue
        keys = key_sentences(body)
        lines.append(f"- **{title}** (`{name}`): " + (" ".join(keys) if keys else "see its section."))
    write_section("summary", "Summary", "\n".join(lines), doc=DOC)
    move_summary_to_top()


def move_summary_to_top() -> None:
    """Place the summary section right after the header (write_section appends new sections at the end)."""
    text = DOC.read_text()
    m = re.search(r"<!-- bench:summary -->.*?<!-- /bench:summary -->\n?", text, re.S)
    if not m:
        return
    block = m.group(0).rstrip("\n")
    rest = (text[: m.start()] + text[m.end():]).rstrip() + "\n"
    first = rest.find("<!-- bench:")
    first = len(rest) if first < 0 else first
    rest = rest[:first].rstrip() + "\n\n" + block + "\n\n" + rest[first:]
    DOC.write_text(re.sub(r"\n{3,}", "\n\n", rest))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the commands in order; run nothing")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="run only these sections (models data report overhead search_efficiency real_cells "
                        "sparse_vs_dense export gpu reliability)")
    parser.add_argument("--export-run", type=Path, help="run directory for bench_export.py (default: a fresh "
                        "10-trial cells.yaml search in a temporary folder)")
    parser.add_argument("--pbc28-run", type=Path, help="read this finished pbc28 run instead of searching again "
                        "(default: a fresh search from search_space/blood_cells.yaml in a temporary folder, ~1 h)")
    parser.add_argument("--cells64-run", type=Path, help="read this finished 64-px synthetic run instead of searching "
                        "again (default: a fresh search from search_space/cells64.yaml in a temporary folder, ~30 min)")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the sections as they are")
    parser.add_argument("--no-summary", action="store_true", help="do not write the summary at the end")
    args = parser.parse_args()

    command = own_command("run_all.py")
    if args.summary_only:
        write_summary({}, command)
        print(f"summary written to {DOC}")
        return 0

    status: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cellsparse-bench-") as tmp:
        steps = plan(args.export_run, Path(tmp), args.pbc28_run, args.cells64_run)
        known = [name for name, _ in steps]
        if args.only:
            unknown = sorted(set(args.only) - set(known))
            if unknown:
                parser.error(f"unknown section(s) {unknown}; choose from {known}")
            steps = [s for s in steps if s[0] in args.only]
        for name, cmds in steps:
            if args.dry_run:
                for cmd in cmds:
                    print(f"[{name}] " + shlex.join(["python" if c == PY else c for c in cmd]))
                continue
            start = time.perf_counter()
            code = 0
            for cmd in cmds:
                print(f"== [{name}] {shlex.join(cmd)}", flush=True)
                code = subprocess.call(cmd, cwd=ROOT)
                if code != 0:
                    break
            minutes = (time.perf_counter() - start) / 60
            status[name] = f"ok ({minutes:.1f} min)" if code == 0 else f"FAILED with status {code} ({minutes:.1f} min)"
            print(f"== [{name}] {status[name]}", flush=True)
    if args.dry_run:
        if not args.no_summary:
            print("[summary] write the summary section at the top of docs/benchmarks.md")
        return 0
    if not args.no_summary:
        write_summary(status, command)
    return 1 if any("FAILED" in s for s in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
