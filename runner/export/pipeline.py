"""``export_run``: one trial of a run, rebuilt, exported, checked and written with its model card.

What lands in the output directory (default ``runs/<name>/export/``)::

    model.onnx        ONNX graph, dynamic batch: input ``images`` (N, C, S, S) float32, output ``logits``
    model.pt2         ``torch.export`` program (``torch.export.load(path).module()``), dynamic batch
    model_card.json   what the model is, what it expects, how good and how fast it is (runner.modelcard)
    README.md         the card for people, with a five-line onnxruntime snippet
    parity.npz        the check inputs and eager logits, so a deployment can re-run the parity check
    .cellsparse-export.json   the names and sha256 of the files above (how a later export knows its own)

Neither model file needs this project to load: ONNX through onnxruntime, .pt2 through torch.
This project itself loads a .pt2 only through ``runner.engine.pt2.load_program``, which first refuses any
archive entry ``torch.export.load`` would unpickle (so a crafted .pt2 cannot run code).

Before anything is kept, every format is checked against the eager PyTorch model on 64 validation
images, at batch 1 (one image at a time) and batch 64: logits within 1e-4 and the same predicted
class for every image. The validation images are regenerated from the run's own data settings and
seed (``runner.data.load_dataset``: the same split the trial was scored on, no copy stored in the
run); the rebuilt model must also reproduce the trial's recorded validation accuracy, which catches
a wrong k or config. When the data can no longer be loaded (a moved npz file), parity falls back to
64 random normal images and the accuracy re-check is skipped; the card says so.

Everything is written into a temporary directory beside the output and renamed into place at the
end, so a failed export (bad input, an exporter error, a parity mismatch) leaves nothing behind.
Each trial goes to its own folder by default (``runs/<name>/export/trial-<n>/``), so exports of
different picks never overwrite each other. A folder that already holds an export is refused unless
``replace`` (``--replace``) is given; then it is replaced file by file: only the files named above
are swapped (a previous export's format files not written this time are removed with it), anything
else there (``predictions.csv`` from ``runner.predict``, a user's notes) is left alone, and the log
says it replaced one. The export recognises only what it wrote: ``.cellsparse-export.json`` (written
last) lists every file with its sha256, and a file named like one of the above that it does not list,
or that changed since, is never replaced: the export is refused with one line
(``runner.export.folder``). Any other non-empty directory is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsparse.commands import command
from cellsparse.errors import UserError
from cellsparse.log import logger
from cellsparse.rundir import SPACE_FILE, read_run
from runner.engine.artefacts import CARD_FILE, FILES, FORMATS, PARITY_FILE, README_FILE, InferenceFn, onnx_runner, pt2_runner
from runner.engine.checkpoint import load_trained
from runner.engine.exporters import (
    TOPK_HINT,
    check_onnx_packages,
    first_line,
    save_onnx,
    save_pt2,
    to_exported_program,
    uses_topk,
)
from runner.export.folder import check_out, default_out, staged
from runner.export.parity import (
    PARITY_ATOL,
    ExportError,
    Parity,
    check_images,
    check_parity,
    eager_logits,
    eager_runner,
    measure_latency,
    recheck_accuracy,
)
from runner.export.pick import Choice, choose_trial
from runner.machine import cpu_name, load_average
from runner.modelcard import build_card, render_readme
from search_space.spec import parse_space


@dataclass
class ExportResult:
    """Where the export went, which trial it is and why, its model card and its model files."""

    out: Path
    choice: Choice
    card: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def export_run(
    run_dir: Path,
    *,
    trial: int | None = None,
    pick: str = "knee",
    max_flops: float | None = None,
    formats: Sequence[str] = FORMATS,
    out: Path | None = None,
    measure: bool = True,
    threads: int = 1,
    replace: bool = False,
    log: Callable[[str], None] = logger.info,
) -> ExportResult:
    """Export one trial of the run in ``run_dir``; see the module docstring for what is written and checked.

    Raises UserError for bad input (the run, the trial, the flags) and ExportError when a format
    cannot be produced or disagrees with the eager model; in both cases nothing is written.
    ``measure=False`` skips the latency measurements (the card then holds none). ``threads`` is the
    intra-op thread count of torch and onnxruntime while exporting, checking and timing: 1 by
    default, a per-core figure that stays meaningful on a shared machine (where more threads than
    idle cores make torch many times slower) and scales out by running one process per core.
    ``out`` defaults to ``runs/<name>/export/trial-<n>``; ``replace`` allows an export already there
    to be replaced (refused otherwise). Progress lines go to ``log`` (default: the ``cellsparse``
    logger; the command prints them).
    """
    if threads < 1:
        raise UserError(f"--threads must be at least 1, but got {threads}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _export(Path(run_dir), trial=trial, pick=pick, max_flops=max_flops, formats=formats, out=out,
                       measure=measure, threads=threads, replace=replace, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _export(run_dir: Path, *, trial: int | None, pick: str, max_flops: float | None, formats: Sequence[str],
            out: Path | None, measure: bool, threads: int, replace: bool, log: Callable[[str], None]) -> ExportResult:
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--formats: unknown format(s) {unknown or '(none given)'}; valid: {', '.join(FORMATS)}")
    if "onnx" in formats:
        check_onnx_packages()
    run = read_run(run_dir)
    space = parse_space(dict(run.space.raw), source=run_dir / SPACE_FILE)
    choice = choose_trial(run, trial=trial, pick=pick, max_flops=max_flops)
    out = Path(out) if out is not None else default_out(run_dir, choice.number)
    replacing = check_out(out, replace=replace)
    log(f"picked {choice.reason}")

    trained = load_trained(run.trial_dir(choice.number), choice.number)
    model, meta = trained.model, trained.meta
    torch.manual_seed(0)
    checks = check_images(space, meta, log=log)
    recorded = trained.metrics.get("val_accuracy", trained.metrics.get("accuracy"))
    val_accuracy = recheck_accuracy(model, checks, None if recorded is None else float(recorded))
    with torch.no_grad():
        used_fraction = float(model.used_map(checks.images).float().mean())

    with staged(out) as tmp:
        files: dict[str, Path] = {}
        parity: dict[str, list[Parity]] = {}
        runners: dict[str, InferenceFn] = {"torch_eager": eager_runner(model)}
        try:
            program = to_exported_program(model, checks.images)
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported as one line
            raise ExportError(f"torch.export failed for trial {choice.number} ({trained.strategy}): "
                              f"{first_line(err)}; nothing was written") from err
        card = build_card(run=run, space=space, trained=trained, choice=choice, checks_source=checks.source,
                          formats=formats, used_fraction=used_fraction, val_accuracy_rechecked=val_accuracy)
        card_json = json.dumps(card, indent=2)
        for fmt in formats:
            path = tmp / FILES[fmt]
            try:
                if fmt == "pt2":
                    save_pt2(program, path, card_json)
                    runner = pt2_runner(path)
                else:
                    save_onnx(program, path, {"cellsparse.model_card": card_json})
                    runner = onnx_runner(path, threads=threads)
            except Exception as err:  # noqa: BLE001
                raise ExportError(f"{fmt} export failed for trial {choice.number} ({trained.strategy}): "
                                  f"{first_line(err)}; nothing was written") from err
            hint = TOPK_HINT if fmt == "onnx" and uses_topk(program) else ""
            parity[fmt] = check_parity(fmt, runner, model, checks.images, hint)
            files[fmt] = path
            runners[{"onnx": "onnxruntime", "pt2": "torch_export"}[fmt]] = runner
            worst = max(p.max_abs_diff for p in parity[fmt])
            log(f"{fmt}: parity ok on {len(checks.images)} images at batch 1 and {len(checks.images)} "
                f"(max |diff| {worst:.2g})")
        latency = measure_latency(runners, checks.images) if measure else {}
        card["parity"] = {
            "inputs": checks.source,
            "atol": PARITY_ATOL,
            **{fmt: {f"batch_{p.batch_size}": {"max_abs_diff": p.max_abs_diff, "class_mismatches": p.class_mismatches}
                     for p in results} for fmt, results in parity.items()},
        }
        card["latency"] = {"cpu": cpu_name(), "threads": threads, "load_average_1min": load_average(),
                           "runtimes": latency}
        np.savez_compressed(tmp / PARITY_FILE, images=checks.images.numpy(),
                            logits=eager_logits(model, checks.images, len(checks.images)).numpy())
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / README_FILE).write_text(render_readme(card), encoding="utf-8")
    log(f"{'replaced the export in' if replacing else 'wrote'} {out}: "
        + ", ".join(FILES[f] for f in formats) + f", {CARD_FILE}, {README_FILE}, {PARITY_FILE}")
    for runtime, figures in card["latency"]["runtimes"].items():
        log(f"  {runtime:<13s} " + "  ".join(f"batch {k.split('_')[1]}: {v['images_per_s']:.0f} img/s"
                                             for k, v in figures.items()))
    log(f"classify images with: {command('predict', out, 'IMAGES')}")
    return ExportResult(out=out, choice=choice, card=card, files={f: out / FILES[f] for f in formats})
