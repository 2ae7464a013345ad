"""The model card an export carries: what the model is, what it expects, how good and fast it is.

``model_card.json`` is read back by ``runner.predict`` (input size, channels, normalisation, class
names), so it is the one record of how to feed an exported model; ``README.md`` renders it for
people. Both sit beside the model files in the export directory.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellsparse.commands import command
from cellsparse.errors import UserError
from cellsparse.files import read_json_object
from objectives import count_params
from runner.data.images import VALUE_SCALING
from runner.engine.artefacts import CARD_FILE, FILES, INPUT_NAME, OUTPUT_NAME
from runner.engine.checkpoint import has_per_image_k
from runner.machine import versions
from search_space.resolution import resolution_of

CARD_VERSION = 1

#: What the raw values of each modality are before normalisation (what ``mean``/``std`` apply to).
VALUE_SCALES = {
    "brightfield": "RGB transmitted light in [0, 1] (8-bit images divided by 255)",
    "rgb": f"RGB values of the files ({VALUE_SCALING})",
    "gray": f"gray values of the files ({VALUE_SCALING})",
    "multichannel": f"every channel of the files ({VALUE_SCALING})",
    "opd": "optical path difference in radians (not scaled; background near 0)",
    "event": "ON and OFF event counts per pixel (non-negative, not scaled)",
}


def library_versions() -> dict[str, str | None]:
    """Versions of what made the export and what runs it."""
    return versions("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "cellsparse")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN -> None


def build_card(
    *,
    run: Any,
    space: Any,
    trained: Any,
    choice: Any,
    checks_source: str,
    formats: list[str],
    used_fraction: float,
    val_accuracy_rechecked: float | None,
) -> dict[str, Any]:
    """The card's content (parity and latency are added by the exporter once measured)."""
    meta, metrics, config = trained.meta, trained.metrics, trained.config
    channels, size = int(meta["in_channels"]), int(meta["image_size"])
    modality = str(meta.get("modality") or space.data.modality)
    data = space.data
    return {
        "card_version": CARD_VERSION,
        "created_at": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "run": {"name": run.name, "path": str(run.path), "seed": space.seed, "objectives": dict(run.directions)},
        "trial": {"number": trained.number, "picked_by": choice.how, "reason": choice.reason},
        "strategy": trained.strategy,
        "config": config,
        "k_rule": config.get("k_rule") if trained.k is not None else None,
        # the k the exported model runs at; per-image rules keep a cap and choose per image (k_final: mean kept)
        "k": None if has_per_image_k(config) else trained.k,
        "classes": list(meta["class_names"]),
        "input": {
            "name": INPUT_NAME,
            "output": OUTPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "image_size": size,
            "modality": modality,
            "value_scale": VALUE_SCALES.get(modality, "as the run's data loader produced them"),
            "resize": "bilinear, antialiased when shrinking (align_corners=False), to image_size x image_size",
            "mean": [float(m) for m in meta["mean"]],
            "std": [float(s) for s in meta["std"]],
            "normalise": "x = (x - mean[c]) / std[c] per channel c, after resizing",
            # the side the network itself sees: below image_size, the model area-downscales inside its graph
            "model_resolution": resolution_of(config, size),
        },
        "metrics": {
            "val_accuracy": _number(metrics.get("val_accuracy", metrics.get("accuracy"))),
            "val_accuracy_rechecked": val_accuracy_rechecked,
            "test_accuracy": _number(metrics.get("test_accuracy")),
            "flops": _number(metrics.get("flops")),
            "params": count_params(trained.model),
            "k_final": _number(metrics.get("k_final")),
            "used_fraction": round(float(used_fraction), 5),
            "used_fraction_on": checks_source,
            "latency_ms_in_search": _number(metrics.get("latency_ms")),
            "objectives": {name: _number(metrics.get(name)) for name in run.directions},
        },
        "data": {
            "source": data.source,
            "path": data.path,
            "modality": modality,
            "described_as": meta.get("source"),
            "image_size": data.image_size,
            "splits": {"train": data.train, "val": data.val, "test": data.test},
            "difficulty": data.difficulty if data.source == "synthetic" else None,
            "seed": space.seed,
        },
        "files": {fmt: FILES[fmt] for fmt in formats},
        "versions": library_versions(),
    }


def find_export(export_dir: Path) -> Path:
    """The export folder ``export_dir`` names: itself when it holds a model card; else the one export
    folder below it (``runs/<name>/export`` holding ``trial-<n>``); UserError naming them when several."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir() or (export_dir / CARD_FILE).is_file():
        return export_dir
    found = sorted(p for p in export_dir.iterdir() if p.is_dir() and (p / CARD_FILE).is_file())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise UserError(f"{export_dir}: holds {len(found)} exports ({names}); pass one of them, e.g. {found[0]}")
    return export_dir


def read_card(export_dir: Path) -> dict[str, Any]:
    """The card of an export directory; UserError when it is not one or the card is unusable."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        what = (f"a file, not an export directory; pass the folder that holds it ({export_dir.parent})"
                if export_dir.is_file() else
                f"no such export directory; pass the folder {command('export')} wrote (default runs/<name>/export/trial-<n>)")
        raise UserError(f"{export_dir}: {what}")
    path = export_dir / CARD_FILE
    card = read_json_object(path, fix="export the model again",
                            missing=f"{export_dir}: no {CARD_FILE} here; is it the output of {command('export')}?")
    try:
        spec = card["input"]
        channels = int(spec["channels"])
        if int(spec["image_size"]) < 1:
            raise ValueError("image_size")
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
        classes = [str(c) for c in card["classes"]]
        files = dict(card["files"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: not a complete model card (missing or bad {err}); export the model again") from None
    if len(mean) != channels or len(std) != channels or not classes or not files:
        raise UserError(f"{path}: inconsistent model card (channels {channels}, mean {mean}, std {std}); "
                        "export the model again")
    return card


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def snippet(card: dict[str, Any]) -> str:
    """Five lines that classify images with onnxruntime alone."""
    spec = card["input"]
    mean = ", ".join(f"{m:.6g}" for m in spec["mean"])
    std = ", ".join(f"{s:.6g}" for s in spec["std"])
    return "\n".join([
        "import numpy as np, onnxruntime as ort",
        'session = ort.InferenceSession("model.onnx")',
        f"x = (images - np.float32([{mean}])[:, None, None]) / np.float32([{std}])[:, None, None]",
        f'logits = session.run(["{spec["output"]}"], {{"{spec["name"]}": x.astype(np.float32)}})[0]',
        f"print([{card['classes']!r}[i] for i in logits.argmax(axis=1)])",
    ])


def _resolution_line(spec: dict[str, Any]) -> str:
    """What the network sees, said for people (cards written before input_size lack the key)."""
    size, seen = int(spec["image_size"]), int(spec.get("model_resolution") or spec["image_size"])
    if seen == size:
        return f"The network sees the frames at {size} x {size} px (no resize inside the model)."
    return (f"The network sees {seen} x {seen} px: the model area-downscales each {size} x {size} frame inside "
            "its graph (in model.onnx and model.pt2 too), so feed it frames at the size above.")


def render_readme(card: dict[str, Any]) -> str:
    """README.md of an export: the card for people."""
    spec, m, data = card["input"], card["metrics"], card["data"]
    trial, run = card["trial"], card["run"]
    lines = [
        f"# {card['strategy']} cell classifier (run {run['name']}, trial {trial['number']})",
        "",
        f"Picked: {trial['reason']}.",
        "",
        "## What it expects",
        "",
        f"- Input `{spec['name']}`: float32 {spec['layout']} (N, {spec['channels']}, {spec['image_size']}, "
        f"{spec['image_size']}), any batch size N >= 1; output `{spec['output']}` (N, {len(card['classes'])}).",
        f"- Values before normalisation: {spec['value_scale']}.",
        f"- Resize: {spec['resize']}.",
        f"- Normalise: {spec['normalise']}, mean = {spec['mean']}, std = {spec['std']}.",
        f"- {_resolution_line(spec)}",
        f"- Classes, in logit order: {', '.join(card['classes'])}.",
        "",
        "## How good and how costly",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| validation accuracy | {_fmt(m['val_accuracy'], '.4f')} |",
        f"| test accuracy | {_fmt(m['test_accuracy'], '.4f')} |",
        f"| FLOPs per image | {_fmt(m['flops'], '.4g')} |",
        f"| parameters | {_fmt(m['params'])} |",
        f"| k (final) | {_fmt(m['k_final'], '.4g')} |",
        f"| fraction of the image used | {_fmt(m['used_fraction'], '.3f')} (on {m['used_fraction_on']}) |",
        "",
    ]
    latency = card.get("latency") or {}
    runtimes = latency.get("runtimes") or {}
    if runtimes:
        batches = sorted({b for figures in runtimes.values() for b in figures}, key=lambda b: int(b.split("_")[1]))
        lines += [
            f"Measured at export on {latency.get('cpu', 'this CPU')} with {latency.get('threads')} thread(s) "
            f"per runtime (1-minute load average {latency.get('load_average_1min')}): images per second "
            "(ms per batch).",
            "",
            "| runtime | " + " | ".join(f"batch {b.split('_')[1]}" for b in batches) + " |",
            "| --- |" + " --- |" * len(batches),
        ]
        for runtime, figures in runtimes.items():
            cells = [f"{figures[b]['images_per_s']:.0f} ({figures[b]['ms_per_batch']:.3g} ms)" if b in figures else "-"
                     for b in batches]
            lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
        lines.append("")
    parity = card.get("parity") or {}
    checked = [f for f in card["files"] if f in parity]
    if checked:
        worst = {f: max(v["max_abs_diff"] for k, v in parity[f].items() if k.startswith("batch_")) for f in checked}
        lines += [
            f"Parity: every file was checked against the eager PyTorch model on {parity['inputs']} at batch 1 "
            f"and 64 (max |logit diff| {', '.join(f'{f} {d:.2g}' for f, d in worst.items())}; limit "
            f"{parity['atol']:g}; identical predicted classes). `parity.npz` holds those inputs and logits.",
            "",
        ]
    where = data["path"] or "the embedded generator"
    lines += [
        "## Trained on",
        "",
        f"{data['source']} data ({where}), modality {data['modality']}, {data['image_size']} px, split sizes "
        f"{data['splits']}, seed {data['seed']}"
        + (f", difficulty {data['difficulty']}" if data.get("difficulty") is not None else "") + ".",
        "",
        "Config:",
        "",
        "```json",
        json.dumps(card["config"], indent=2),
        "```",
        "",
        "## How to run it",
        "",
        "With onnxruntime only (`images`: float32 (N, C, S, S) in the value scale above, already resized):",
        "",
        "```python",
        snippet(card),
        "```",
        "",
        "With torch: `module = runner.engine.pt2.load_program(\"model.pt2\").module()` (it refuses archives that would "
        "unpickle code; plain `torch.export.load` unpickles what the file holds, so use it only on files you made), "
        "then `logits = module(torch.from_numpy(x))`.",
        "",
        "With this project (reads files, folders or an npz, resizes and normalises as in training):",
        "",
        "```bash",
        command("predict", "path/to/this/export", "images/", "--out", "predictions.csv"),
        "```",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v) + ".",
        "",
    ]
    return "\n".join(lines)
