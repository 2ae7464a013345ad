"""Cost of each strategy at its default config: params, FLOPs and measured CPU latency.

Answers whether FLOPs savings become time savings: for each strategy, its FLOPs and latency are
divided by dense_cnn's at the same image size and batch, measured side by side in one run.

    python benchmarks/bench_models.py [--threads 2] [--sizes 28 64] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from objectives import count_flops, count_params, measure_latency_ms  # noqa: E402
from search_space import build_model, default_config, strategy_names  # noqa: E402
from search_space.strategies import get_strategy  # noqa: E402


def measure(size: int, batches: tuple[int, ...], *, rounds: int = 3, channels: int = 3, classes: int = 8) -> list[dict]:
    """Params, FLOPs and latency of every strategy's default model at one image size.

    Latency is the best of ``rounds`` round-robin passes over all models, so a burst of load from
    other work on the machine hits every model alike instead of whichever ran at the time.
    """
    models, rows = {}, []
    images = torch.rand(max(batches), channels, size, size)
    for name in strategy_names():
        torch.manual_seed(0)
        models[name] = build_model(default_config(name), channels, classes, size).eval()
        rows.append({"strategy": name, "size": size, "sparse": get_strategy(name).sparse,
                     "params": count_params(models[name]), "flops": count_flops(models[name], images[:8])})
    for _ in range(rounds):
        for row in rows:
            for batch in batches:
                repeats = 20 if batch == 1 else 2
                ms = measure_latency_ms(models[row["strategy"]], images[:batch], warmup=2, repeats=repeats)
                row[f"ms_b{batch}"] = min(ms, row.get(f"ms_b{batch}", float("inf")))
    return rows


def verdict(row: dict, base: dict) -> str:
    """One line: a model cheaper than dense_cnn in FLOPs, and whether it is also faster, per batch size."""
    flops = row["flops"] / base["flops"]
    parts = []
    for batch in (1, 256):
        ratio = row[f"ms_b{batch}"] / base[f"ms_b{batch}"]
        parts.append(f"batch {batch}: {ratio:.2f}x the time ({'faster' if ratio < 1 else 'not faster'})")
    return f"- {row['strategy']} at {row['size']} px: {flops:.2f}x the FLOPs of dense_cnn; " + "; ".join(parts) + "."


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _ratios(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{v:.2f}x" for v in values) + unit


def _batch_clause(saving: list[dict], base: dict, batch: int, unit: str) -> str:
    """Which of the FLOPs-saving models take less time than dense_cnn at one batch size, with their time ratios."""
    ratio = {r["strategy"]: r[f"ms_b{batch}"] / base[f"ms_b{batch}"] for r in saving}
    faster = [n for n, t in ratio.items() if t < 1]
    slower = [n for n, t in ratio.items() if t >= 1]
    every = "it is" if len(saving) == 1 else "both are" if len(saving) == 2 else "all are"
    if not slower or not faster:
        word = "faster" if faster else "slower"
        return f"at batch {batch} {every} {word} ({_ratios(list(ratio.values()), unit)})"
    verb = "is" if len(faster) == 1 else "are"
    return (f"at batch {batch} {_names(faster)} {verb} faster ({_ratios([ratio[n] for n in faster], unit)}), "
            f"{_names(slower)} slower ({_ratios([ratio[n] for n in slower], unit)})")


def in_short(rows: list[dict]) -> str:
    """The section's plain-words paragraph: do the sparse strategies' FLOPs savings against dense_cnn become
    time savings, at batch 1 and at the largest batch, per image size? Built from the measured rows only."""
    batches = sorted(int(k[len("ms_b"):]) for k in rows[0] if k.startswith("ms_b"))
    small, large = batches[0], batches[-1]
    clauses = []
    for size in sorted({r["size"] for r in rows}):
        here = [r for r in rows if r["size"] == size]
        base = next(r for r in here if r["strategy"] == "dense_cnn")
        sparse = [r for r in here if r["sparse"]]
        saving = [r for r in sparse if r["flops"] < base["flops"]]
        costlier = [r for r in sparse if r["flops"] >= base["flops"]]
        if saving:
            names = _names([r["strategy"] for r in saving])
            text = (f"at {size} px {names} need{'s' if len(saving) == 1 else ''} "
                    f"{_ratios([r['flops'] / base['flops'] for r in saving])} the FLOPs of dense_cnn; "
                    + _batch_clause(saving, base, small, " the time"))
            if large != small:
                text += ", " + _batch_clause(saving, base, large, "")
        else:
            text = f"at {size} px no sparse strategy needs fewer FLOPs than dense_cnn"
        if costlier:
            text += (f"; {_names([r['strategy'] for r in costlier])} need{'s' if len(costlier) == 1 else ''} more "
                     f"FLOPs than dense_cnn ({_ratios([r['flops'] / base['flops'] for r in costlier])})")
        clauses.append(text)
    # one sentence per image size; more than three sizes share one sentence, so the paragraph stays short
    sentences = clauses if len(clauses) <= 3 else ["; ".join(clauses)]
    return "**In short:** " + " ".join(c[0].upper() + c[1:] + "." for c in sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per-core figures)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = (1, 256)
    table, verdicts, measured = [], [], []
    for size in args.sizes:
        rows = measure(size, batches)
        measured += rows
        base = next(r for r in rows if r["strategy"] == "dense_cnn")
        verdicts += [verdict(r, base) for r in rows if r["strategy"] != "dense_cnn" and r["flops"] < base["flops"]]
        for r in rows:
            table.append([
                r["strategy"], size, f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}",
                f"{r['ms_b1']:.3f}", f"{r['ms_b256']:.4f}",
                f"{r['flops'] / base['flops']:.2f}", f"{r['ms_b1'] / base['ms_b1']:.2f}",
                f"{r['ms_b256'] / base['ms_b256']:.2f}",
            ])
    header = ["strategy", "px", "params", "MFLOPs/image", "ms/image b=1", "ms/image b=256",
              "FLOPs vs dense_cnn", "latency b=1 vs dense_cnn", "latency b=256 vs dense_cnn"]
    text = markdown_table(header, table) + "\n\nDo FLOPs savings become time savings?\n\n" + "\n".join(verdicts)
    short = in_short(measured)
    print(short + "\n\n" + text)
    if not args.no_write:
        body = (f"{stamp(own_command('bench_models.py'))}\n\n{short}\n\nDefault config of each strategy (weights seeded 0), "
                f"3 channels, 8 classes, eval mode, "
                f"latency per image = batch time / batch size, the best of 3 round-robin passes over the models. "
                f"On a shared 2-core machine "
                f"single figures vary between runs by up to 2x; compare the ratios, measured side by side.\n\n{text}\n")
        write_section("models", "Model cost per strategy (FLOPs against measured latency)", body)


if __name__ == "__main__":
    main()
