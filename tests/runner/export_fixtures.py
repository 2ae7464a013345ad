"""Tiny real run directories for the export and predict tests, made by the real search runner.

Each run is one ``python -m runner.search`` (in-process, optuna backend) over a single strategy:
16 px synthetic cells, 64 training images, one epoch. Runs are cached per session and root, so
test modules that both need the sparse_topk run share one search.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from pathlib import Path

from search_space.strategies import get_strategy, strategy_names

# Small settings per strategy, so training and export stay quick; everything else is the default.
TINY: dict[str, str] = {
    "sparse_topk": "{embed_dim: 16, num_heads: 2, depth: 1, coarse_channels: 4}",
    "tnet_traversal": "{width: 4, embed_dim: 16, base_resolution: 8}",
    "span_pyramid": "{embed_dim: 16, num_heads: 2, depth: 1}",
    "dense_cnn": "{width: 4, stages: 2}",
    "dense_vit": "{embed_dim: 16, num_heads: 2, depth: 1}",
}

_RUNS: dict[tuple[Path, str], Path] = {}


def project_strategies() -> list[str]:
    """Registered strategies that ship with the project (test-only plugins left out)."""
    return [n for n in strategy_names() if get_strategy(n).model.__module__.startswith("search_space.")]


def space_text(name: str, strategy: str, *, block: str | None = None, trials: int = 1, extra: str = "",
               modality: str = "brightfield") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        seed: 0
        data: {{source: synthetic, modality: {modality}, image_size: 16, train: 64, val: 64, test: 32, augment: false}}
        objectives: {{accuracy: maximize, flops: minimize}}
        training: {{epochs: 1, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.0}}
        search:
          trials: {trials}
          sampler: {{name: random, seed: 0}}
          backend: optuna
          max_concurrent: 1
          resources: {{cpu: 1, gpu: 0}}
        space:
          strategy:
            {strategy}: {block if block is not None else TINY.get(strategy, "{}")}
        """) + extra


def search(root: Path, name: str, text: str) -> Path:
    """Run a search over the space ``text`` into ``root/name``; return the run directory."""
    from runner.search import main

    root.mkdir(parents=True, exist_ok=True)
    space = root / f"{name}.yaml"
    space.write_text(text, encoding="utf-8")
    out = root / name
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        status = main(["--space", str(space), "--out", str(out)])
    assert status == 0, f"the search for {name} failed ({status}):\n{printed.getvalue()}"
    return out


def tiny_run(root: Path, strategy: str, **kwargs: object) -> Path:
    """A finished one-trial run of ``strategy`` under ``root`` (made once per session and root)."""
    key = (Path(root), strategy + repr(sorted(kwargs.items())))
    if key not in _RUNS:
        name = f"tiny_{strategy}" + (f"_{len(_RUNS)}" if kwargs else "")
        _RUNS[key] = search(Path(root), name, space_text(name, strategy, **kwargs))  # type: ignore[arg-type]
    return _RUNS[key]


# A script run by a fresh ``python -I``: it blocks every import of this project's packages, then
# loads both exported files with onnxruntime and torch alone and checks them against parity.npz.
CLEAN_LOAD = textwrap.dedent("""\
    import importlib.abc, json, sys

    PROJECT = {"runner", "search_space", "objectives", "reports", "tests", "benchmarks"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in PROJECT:
                raise ImportError(f"blocked import of project module {name}")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import onnxruntime as ort
    import torch

    export = sys.argv[1]
    data = np.load(export + "/parity.npz")
    x, want = data["images"], data["logits"]
    session = ort.InferenceSession(export + "/model.onnx", providers=["CPUExecutionProvider"])
    onnx_all = session.run(["logits"], {"images": x})[0]
    onnx_one = np.concatenate([session.run(["logits"], {"images": x[i:i + 1]})[0] for i in range(len(x))])
    module = torch.export.load(export + "/model.pt2").module()
    with torch.no_grad():
        pt2_all = module(torch.from_numpy(x)).numpy()
        pt2_one = module(torch.from_numpy(x[:1])).numpy()
    print(json.dumps({
        "onnx": float(max(abs(onnx_all - want).max(), abs(onnx_one - want).max())),
        "pt2": float(max(abs(pt2_all - want).max(), abs(pt2_one - want[:1]).max())),
        "same_classes": bool((onnx_all.argmax(1) == want.argmax(1)).all() and (pt2_all.argmax(1) == want.argmax(1)).all()),
        "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in PROJECT),
    }))
    """)


def load_without_project(export_dir: Path, workdir: Path) -> dict:
    """Run :data:`CLEAN_LOAD` in an isolated interpreter (``-I``, cwd ``workdir``); return its figures."""
    import json
    import subprocess
    import sys

    script = workdir / "clean_load.py"
    script.write_text(CLEAN_LOAD, encoding="utf-8")
    done = subprocess.run([sys.executable, "-I", str(script), str(Path(export_dir).resolve())], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_EXPORTS: dict[tuple[Path, str], tuple[Path, object, list[str]]] = {}


def tiny_export(root: Path, strategy: str) -> tuple[Path, object, list[str]]:
    """The tiny run of ``strategy`` exported in both formats with latency measured, once per session:
    (export directory, ``ExportResult``, the lines the exporter printed)."""
    from runner.export import export_run

    key = (Path(root), strategy)
    if key not in _EXPORTS:
        run = tiny_run(root, strategy)
        lines: list[str] = []
        out = Path(root) / "exports" / strategy
        result = export_run(run, out=out, log=lines.append)
        _EXPORTS[key] = (out, result, lines)
    return _EXPORTS[key]
