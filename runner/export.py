"""``python -m runner.export``: turn the model a user picks from a run into deployable files.

    python -m runner.export runs/cells                      # the knee of the accuracy/FLOPs front
    python -m runner.export runs/cells --trial 7            # a trial by number
    python -m runner.export runs/cells --pick budget --max-flops 5e6 --formats onnx --out deploy/

What lands in the output directory (default ``runs/<name>/export/``)::

    model.onnx        ONNX graph, dynamic batch: input ``images`` (N, C, S, S) float32, output ``logits``
    model.pt2         ``torch.export`` program (``torch.export.load(path).module()``), dynamic batch
    model_card.json   what the model is, what it expects, how good and how fast it is (runner.modelcard)
    README.md         the card for people, with a five-line onnxruntime snippet
    parity.npz        the check inputs and eager logits, so a deployment can re-run the parity check

Neither model file needs this project to load: ONNX through onnxruntime, .pt2 through torch.
This project itself loads a .pt2 only through ``runner.pt2.load_program``, which first refuses any
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
An existing export in the output directory is replaced file by file: only the files named above
are swapped (a previous export's format files not written this time are removed with it), and
anything else there (``predictions.csv`` from ``runner.predict``, a user's notes) is left alone.
Any other non-empty directory is refused.
Exit status: 0 done, 1 the export or its parity check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from runner.artefacts import CARD_FILE, FILES, FORMATS, INPUT_NAME, OUTPUT_NAME, PARITY_FILE, README_FILE
from runner.modelcard import build_card, render_readme
from search_space.errors import UserError

PARITY_IMAGES = 64  # validation images every format is checked on (and timed at batch 64)
PARITY_ATOL = 1e-4  # max |exported - eager| logit difference allowed (fp32)
ACCURACY_SLACK = 1  # images the re-scored validation accuracy may differ by (thread-order ties)

EXIT_FAILED = 1
EXIT_USER_ERROR = 2


class ExportError(UserError):
    """An export could not be produced or did not match the eager model; the message has the figures."""


# ---------------------------------------------------------------------------------------------
# Which trial


@dataclass(frozen=True)
class Choice:
    """The trial to export and one line saying why it was chosen."""

    number: int
    how: str  # "trial" (given), "knee", "accuracy" or "budget"
    reason: str


def _figures(row: Any, objectives: Sequence[str]) -> str:
    parts = []
    for name in objectives:
        value = row.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        parts.append(f"{name} {number:.4g}" if name != "accuracy" else f"{name} {number:.3f}")
    return ", ".join(parts)


def choose_trial(run: Any, *, trial: int | None, pick: str, max_flops: float | None) -> Choice:
    """The trial to export from a loaded run (``cellsparse.rundir.Run``); UserError when none qualifies.

    A given ``trial`` must be COMPLETE and feasible. Otherwise ``pick`` goes to
    ``reports.pareto.pick_trial`` (the report's own picks): ``budget`` takes ``max_flops`` or, when
    not given, the run's ``constraints.max_flops``.
    """
    from reports.pareto import eligible_mask, pick_trial

    trials = run.trials
    objectives = run.objectives
    if trial is not None:
        rows = trials[trials["number"] == trial]
        if rows.empty:
            numbers = ", ".join(str(n) for n in trials["number"].tolist()[:20]) or "none"
            raise UserError(f"{run.path}: no trial {trial} in trials.csv (trials: {numbers})")
        row = rows.iloc[0]
        if str(row["state"]).upper() != "COMPLETE":
            done = trials.loc[trials["state"] == "COMPLETE", "number"].tolist()
            raise UserError(
                f"trial {trial} is {str(row['state']).upper()}, not COMPLETE; complete trials: "
                f"{', '.join(map(str, done[:20])) or 'none'}"
            )
        if not bool(eligible_mask(rows, [o for o in objectives if o in rows.columns]).iloc[0]):
            raise UserError(f"trial {trial} is infeasible (over a constraint, never trained); pick another trial")
        return Choice(trial, "trial", f"trial {trial} ({row['strategy']}) as asked: {_figures(row, objectives)}")
    if pick == "budget" and max_flops is None:
        max_flops = (run.space.get("constraints") or {}).get("max_flops")
    if not eligible_mask(trials, objectives).any():
        raise UserError(f"{run.path}: no complete, feasible trial to export (trials.csv has {len(trials)} trials)")
    number = pick_trial(trials, run.directions, pick, max_flops=max_flops)
    row = trials[trials["number"] == number].iloc[0]
    why = {
        "knee": "the knee of the accuracy/FLOPs front (where the trade-off bends most)",
        "accuracy": "the most accurate complete, feasible trial",
        "budget": f"the most accurate trial within {max_flops:g} FLOPs" if max_flops is not None else "",
    }[pick]
    return Choice(number, pick, f"trial {number} ({row['strategy']}): {why}; {_figures(row, objectives)}")


# ---------------------------------------------------------------------------------------------
# Check images


@dataclass
class CheckImages:
    """Validation images as the model sees them (normalised), and what they are."""

    images: torch.Tensor  # (N, C, S, S) float32, the first PARITY_IMAGES of ``all_images``
    all_images: torch.Tensor | None  # the whole validation split, for the accuracy re-check
    labels: torch.Tensor | None
    source: str  # one line for the card


def check_images(space: Any, meta: dict[str, Any], *, log: Callable[[str], None]) -> CheckImages:
    """The run's validation split (regenerated from its data settings and seed), or random inputs."""
    shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    try:
        from runner.data import load_dataset

        data = load_dataset(**space.data.loader_kwargs(), seed=space.seed)
        if (data.in_channels, data.image_size, data.image_size) != shape or len(data.val_x) == 0:
            raise UserError(
                f"the reloaded data has shape {(data.in_channels, data.image_size)} and {len(data.val_x)} "
                f"validation images, the trial was trained on {shape[:2]}"
            )
        val_x = data.val_x.float()
        n = min(PARITY_IMAGES, len(val_x))
        return CheckImages(val_x[:n].contiguous(), val_x, data.val_y.long(), f"the first {n} validation images "
                           f"(runner.data.load_dataset, source {space.data.source}, seed {space.seed})")
    except (UserError, ImportError) as err:
        log(f"note: the validation data cannot be loaded ({err}); parity is checked on {PARITY_IMAGES} random "
            "normal images and the accuracy re-check is skipped")
        images = torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
        return CheckImages(images, None, None, f"{PARITY_IMAGES} random normal images (validation data unavailable)")


@torch.no_grad()
def eager_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The eager model's logits, ``batch_size`` images per forward."""
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def recheck_accuracy(model: torch.nn.Module, checks: CheckImages, recorded: float | None) -> float | None:
    """Validation accuracy of the rebuilt model; ExportError when it is off the trial's own figure."""
    if checks.all_images is None or checks.labels is None:
        return None
    preds = eager_logits(model, checks.all_images, 256).argmax(dim=-1)
    accuracy = float((preds == checks.labels).float().mean())
    if recorded is not None and math.isfinite(recorded):
        n = len(checks.labels)
        if abs(accuracy - recorded) * n > ACCURACY_SLACK + 1e-6:
            raise ExportError(
                f"the rebuilt model scores {accuracy:.4f} on the {n} validation images, the trial recorded "
                f"{recorded:.4f}: the config and final k do not rebuild it, or the validation data differ from the "
                "trial's (the data files or the generator changed since the run); nothing was written"
            )
    return accuracy


# ---------------------------------------------------------------------------------------------
# Formats


def _median_dim(self: Any, dim: int, keepdim: bool = False) -> Any:
    """ONNX for ``aten.median.dim`` (the lower median, as torch returns it), which the exporter lacks.

    span_pyramid's foreground score takes the median of the image border. Sort ascending with TopK
    (k = the full length) and take element (n - 1) // 2 with its index.
    """
    from onnxscript import opset18 as op

    rank = len(self.shape)
    dim = dim + rank if dim < 0 else dim
    n = op.Shape(self, start=dim, end=dim + 1)  # (1,) int64
    values, indices = op.TopK(self, n, axis=dim, largest=0, sorted=1)
    middle = op.Div(op.Sub(n, op.Constant(value_ints=[1])), op.Constant(value_ints=[2]))
    value, index = op.Gather(values, middle, axis=dim), op.Gather(indices, middle, axis=dim)
    if not keepdim:
        axes = op.Constant(value_ints=[dim])
        value, index = op.Squeeze(value, axes), op.Squeeze(index, axes)
    return value, index


def _sort_stable(self: Any, *, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """ONNX for ``aten.sort.stable``, which the exporter lacks: a full-length TopK.

    onnxruntime's TopK puts equal elements in index order (lower index first), which is exactly a
    stable sort, ascending or descending. A stable sort is how a model breaks ties between equal
    scores deterministically, so that eager PyTorch and onnxruntime select the same elements;
    ``topk`` does not (PyTorch's CPU kernel and onnxruntime break ties differently).
    """
    from onnxscript import opset18 as op

    rank = len(self.shape)
    dim = dim + rank if dim < 0 else dim
    n = op.Shape(self, start=dim, end=dim + 1)
    values, indices = op.TopK(self, n, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def _onnx_translations() -> dict[Any, Callable[..., Any]]:
    return {torch.ops.aten.median.dim: _median_dim, torch.ops.aten.sort.stable: _sort_stable}


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress lines and warnings (failures still raise)."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return f"{type(err).__name__}: {line.strip()[:300]}"
    return type(err).__name__


def to_exported_program(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` the eval model with a dynamic batch dimension (any N >= 1)."""
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        # positional form: the forward's argument may have any name (plugin strategies)
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)


def save_pt2(program: torch.export.ExportedProgram, path: Path, card_json: str) -> None:
    """Save the program; the model card rides along as an extra file (``extra_files['model_card.json']``)."""
    torch.export.save(program, path, extra_files={"model_card.json": card_json})


def save_onnx(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> None:
    """Translate the exported program to a self-contained ONNX file (dynamo exporter, batch named ``batch``)."""
    import onnx_ir as ir

    with _quiet():
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True,
            custom_translation_table=_onnx_translations(), verbose=False,
        )
    graph = onnx_program.model.graph
    for value in [*graph.inputs, *graph.outputs]:  # s0 -> a readable name for the dynamic batch
        if value.shape is not None and len(value.shape) > 0:
            value.shape = ir.Shape([ir.SymbolicDim("batch"), *list(value.shape)[1:]])
    onnx_program.model.metadata_props.update(metadata)
    onnx_program.save(path, external_data=False)


def onnx_runner(path: Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """(N, C, S, S) float32 -> logits through onnxruntime on the CPU, with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def pt2_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """(N, C, S, S) float32 -> logits through the saved .pt2, loaded back from disk (never unpickled)."""
    from runner.pt2 import load_program

    module = load_program(path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


# ---------------------------------------------------------------------------------------------
# Parity and latency


@dataclass
class Parity:
    """How one format compares with the eager model at one batch size."""

    batch_size: int
    max_abs_diff: float
    class_mismatches: int
    images: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.class_mismatches == 0


def uses_topk(program: torch.export.ExportedProgram) -> bool:
    """Whether the program selects with ``topk`` (whose tie-breaking differs between runtimes)."""
    return any(node.op == "call_function" and "topk" in str(node.target) for node in program.graph.nodes)


TOPK_HINT = (" (the model selects with topk: where scores tie, PyTorch and onnxruntime keep different elements; "
             "the strategy should select with a stable sort, torch.sort(..., stable=True), which exports exactly)")


def check_parity(fmt: str, run: Callable[[np.ndarray], np.ndarray], model: torch.nn.Module,
                 images: torch.Tensor, hint: str = "") -> list[Parity]:
    """Compare ``run`` with eager at batch 1 and batch len(images); ExportError with the figures on a mismatch.

    ``hint`` is added to the message of a mismatch (a likely cause)."""
    results = []
    for batch_size in sorted({1, len(images)}):
        expected = eager_logits(model, images, batch_size).numpy()
        got = np.concatenate([run(images[i : i + batch_size].numpy()) for i in range(0, len(images), batch_size)])
        if got.shape != expected.shape:
            raise ExportError(f"parity check failed for {fmt} at batch {batch_size}: output shape {got.shape}, "
                              f"eager {expected.shape}; nothing was written")
        diff = float(np.abs(got - expected).max()) if got.size else 0.0
        if not math.isfinite(diff):
            diff = math.inf
        mismatches = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
        results.append(Parity(batch_size, diff, mismatches, len(images)))
    bad = [p for p in results if not p.ok]
    if bad:
        text = "; ".join(
            f"batch {p.batch_size}: max |exported - eager| = {p.max_abs_diff:.3g} (limit {PARITY_ATOL:g}), "
            f"{p.class_mismatches} of {p.images} predicted classes differ" for p in bad
        )
        raise ExportError(f"parity check failed for {fmt}: {text}{hint}; nothing was written")
    return results


def time_batches(run: Callable[[Any], Any], x: Any, *, min_time_s: float = 0.3, max_repeats: int = 30) -> float:
    """Median milliseconds per call of ``run(x)``: 2 warm-up calls, then repeats for ``min_time_s``."""
    for _ in range(2):
        run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def measure_latency(runners: dict[str, Callable[[np.ndarray], np.ndarray]], images: torch.Tensor,
                    batch_sizes: Sequence[int] = (1, PARITY_IMAGES)) -> dict[str, dict[str, dict[str, float]]]:
    """``{runtime: {"batch_<n>": {"ms_per_batch", "ms_per_image", "images_per_s"}}}`` on the CPU.

    Batches larger than the check images repeat them. Threads are whatever the runners were built
    with (the exporter uses the same count for torch and onnxruntime).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, run in runners.items():
        out[name] = {}
        for n in batch_sizes:
            reps = math.ceil(n / len(images))
            x = images.repeat(reps, 1, 1, 1)[:n].numpy()
            ms = time_batches(run, x)
            out[name][f"batch_{n}"] = {
                "ms_per_batch": round(ms, 4), "ms_per_image": round(ms / n, 5), "images_per_s": round(n / ms * 1e3, 1)
            }
    return out


def eager_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


# ---------------------------------------------------------------------------------------------
# Writing the directory


def _check_out(out: Path) -> bool:
    """Whether ``out`` holds a previous export (to replace); UserError for anything else in the way."""

    if not out.exists():
        blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"--out {out}: {blocker} is a file, not a directory")
        return False
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if (out / CARD_FILE).is_file():
        return True
    if any(out.iterdir()):
        raise UserError(f"--out {out}: not empty and holds no export ({CARD_FILE} missing); pass a new or empty directory")
    return False


def _chmod_like_mkdir(path: Path) -> None:
    """mkdtemp makes 0700 directories; an export is shared like any folder (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _owned_names() -> tuple[str, ...]:
    """The file names an export writes into its directory, and the only ones it ever replaces or removes."""
    return (*FILES.values(), PARITY_FILE, CARD_FILE, README_FILE)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Move the staged files in ``tmp`` into ``out``; ``tmp`` is removed.

    A new ``out`` is ``tmp`` renamed. Into an existing one (a previous export, see ``_check_out``)
    only the export's own files are swapped: the previous ones are moved aside first and put back
    if anything fails, so ``out`` ends up either wholly old or wholly new and nothing else in it
    is touched.
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    set_aside: list[str] = []
    placed: list[str] = []
    try:
        for name in _owned_names():
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, old / name)
                set_aside.append(name)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
            placed.append(path.name)
    except BaseException:
        for name in placed:
            os.replace(out / name, tmp / name)
        for name in set_aside:
            os.replace(old / name, out / name)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    tmp.rmdir()


@dataclass
class ExportResult:
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
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export one trial of the run in ``run_dir``; see the module docstring for what is written and checked.

    Raises UserError for bad input (the run, the trial, the flags) and ExportError when a format
    cannot be produced or disagrees with the eager model; in both cases nothing is written.
    ``measure=False`` skips the latency measurements (the card then holds none). ``threads`` is the
    intra-op thread count of torch and onnxruntime while exporting, checking and timing: 1 by
    default, a per-core figure that stays meaningful on a shared machine (where more threads than
    idle cores make torch many times slower) and scales out by running one process per core.
    """
    if threads < 1:
        raise UserError(f"--threads must be at least 1, but got {threads}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _export(Path(run_dir), trial=trial, pick=pick, max_flops=max_flops, formats=formats, out=out,
                       measure=measure, threads=threads, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _export(run_dir: Path, *, trial: int | None, pick: str, max_flops: float | None, formats: Sequence[str],
            out: Path | None, measure: bool, threads: int, log: Callable[[str], None]) -> ExportResult:
    from cellsparse.rundir import load_run
    from runner.checkpoint import load_trained
    from search_space.spec import parse_space

    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--formats: unknown format(s) {unknown or '(none given)'}; valid: {', '.join(FORMATS)}")
    if "onnx" in formats:
        check_onnx_packages()
    run = load_run(run_dir)
    space = parse_space(run.space, source=run_dir / "space.yaml")
    choice = choose_trial(run, trial=trial, pick=pick, max_flops=max_flops)
    out = Path(out) if out is not None else run_dir / "export"
    replacing = _check_out(out)
    log(f"picked {choice.reason}")

    trained = load_trained(run.trial_dir(choice.number), choice.number)
    model, meta = trained.model, trained.meta
    torch.manual_seed(0)
    checks = check_images(space, meta, log=log)
    recorded = trained.metrics.get("val_accuracy", trained.metrics.get("accuracy"))
    val_accuracy = recheck_accuracy(model, checks, None if recorded is None else float(recorded))
    with torch.no_grad():
        used_fraction = float(model.used_map(checks.images).float().mean())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    _chmod_like_mkdir(tmp)
    try:
        files: dict[str, Path] = {}
        parity: dict[str, list[Parity]] = {}
        runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch_eager": eager_runner(model)}
        try:
            program = to_exported_program(model, checks.images)
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported as one line
            raise ExportError(f"torch.export failed for trial {choice.number} ({trained.strategy}): "
                              f"{_first_line(err)}; nothing was written") from err
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
                    runner = onnx_runner(path, threads)
            except Exception as err:  # noqa: BLE001
                raise ExportError(f"{fmt} export failed for trial {choice.number} ({trained.strategy}): "
                                  f"{_first_line(err)}; nothing was written") from err
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
        card["latency"] = {"cpu": _cpu_name(), "threads": threads, "load_average_1min": _load_average(),
                           "runtimes": latency}
        np.savez_compressed(tmp / PARITY_FILE, images=checks.images.numpy(),
                            logits=eager_logits(model, checks.images, len(checks.images)).numpy())
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / README_FILE).write_text(render_readme(card), encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{'replaced the export in' if replacing else 'wrote'} {out}: "
        + ", ".join(FILES[f] for f in formats) + f", {CARD_FILE}, {README_FILE}")
    for runtime, figures in card["latency"]["runtimes"].items():
        log(f"  {runtime:<13s} " + "  ".join(f"batch {k.split('_')[1]}: {v['images_per_s']:.0f} img/s"
                                             for k, v in figures.items()))
    return ExportResult(out=out, choice=choice, card=card, files={f: out / FILES[f] for f in formats})


def _load_average() -> float | None:
    """How busy the machine was while timing (other processes make the figures slower and noisier)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


# ---------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see python -m runner.export --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m runner.export",
        description="Export a trained model from a run for deployment (ONNX and torch.export .pt2), checked "
        "against the eager model, with a model card.",
        epilog="Exit status: 0 done, 1 the export or its parity check failed, 2 bad input.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (runs/<name>)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, metavar="N", help="export trial N (must be COMPLETE and feasible)")
    which.add_argument("--pick", choices=("knee", "accuracy", "budget"), default="knee",
                       help="how to choose the trial when --trial is not given (default: knee of the "
                       "accuracy/FLOPs front; budget: most accurate within --max-flops)")
    parser.add_argument("--max-flops", type=float, metavar="F",
                        help="FLOPs budget for --pick budget (default: the run's constraints.max_flops)")
    parser.add_argument("--formats", default=",".join(FORMATS), metavar="LIST",
                        help=f"comma-separated formats to write (default: {','.join(FORMATS)})")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="intra-op threads of torch and onnxruntime while checking and timing (default 1: "
                        "per-core figures)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from runner.backends.common import import_plugins, plugin_modules

        import_plugins(plugin_modules())
        if args.max_flops is not None and args.pick != "budget":
            raise UserError("--max-flops only applies to --pick budget")
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        export_run(args.run_dir, trial=args.trial, pick=args.pick, max_flops=args.max_flops, formats=formats,
                   out=args.out, measure=not args.no_latency, threads=args.threads)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


#: What the ONNX format needs beyond torch: import name -> distribution (pip) name.
ONNX_PACKAGES = {"onnx": "onnx", "onnx_ir": "onnx-ir", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}


def check_onnx_packages() -> None:
    """UserError naming the missing packages, and how to install them, before any work is done."""
    import importlib.util

    missing = [dist for module, dist in ONNX_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"the onnx format needs {', '.join(ONNX_PACKAGES.values())}, but {', '.join(missing)} "
                        "is not installed; install them with: python -m pip install -e \".[export]\" (in the "
                        f"project folder) or python -m pip install {' '.join(missing)}; or pass --formats pt2")


if __name__ == "__main__":
    sys.exit(main())
