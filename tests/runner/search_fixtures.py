"""Test-only pieces for the search tests: a tiny strategy that can be told to fail, and space files.

``probe_net`` is registered when this module is imported. Trial processes import it through the
``CELLSPARSE_PLUGINS`` environment variable (the same way a user's own strategy package is
loaded), so Ray workers and CLI subprocesses know it too. Its ``behaviour`` parameter forces the
failures the backends must record: ``raise`` raises in the first forward pass, ``nan`` makes the
loss NaN, ``die`` kills its own process with SIGKILL (a worker killed for memory), and
``by_trial`` takes the behaviour of trial n from the comma-separated list in the
``PROBE_BEHAVIOURS`` environment variable (cycled; the trial's seed is the space seed 0 + n, and a
trial seeds torch before it builds its model), so a test decides which trials fail. With
``PROBE_SLEEP_S`` set, every training step sleeps that long: trials last long enough for a test
to stop the search in the middle of one, whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

from runner.search import main as search_main
from search_space.strategies import CellClassifier, ParamSpec, register_strategy, strategy_names

MODULE = "tests.runner.search_fixtures"
NAME = "probe_net"


class ProbeNet(CellClassifier):
    """Keeps the k brightest pixels (by mean |value|), then conv -> pool -> linear. Cheap on purpose."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int, k_fraction: float,
                 behaviour: str) -> None:
        super().__init__()
        self.pixels = image_size * image_size
        self._k = max(1, round(k_fraction * self.pixels))
        if behaviour == "by_trial":
            plan = os.environ.get("PROBE_BEHAVIOURS", "ok").split(",")
            behaviour = plan[torch.initial_seed() % len(plan)]
        self.behaviour = behaviour
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def _mask(self, images: torch.Tensor) -> torch.Tensor:
        score = images.abs().mean(dim=1).flatten(1)  # (B, H*W)
        keep = score.topk(self._k, dim=1).indices
        mask = torch.zeros_like(score).scatter_(1, keep, 1.0)
        return mask.view(images.shape[0], 1, *images.shape[-2:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.behaviour == "raise" and self.training:
            raise RuntimeError("probe_net was told to fail")
        if self.behaviour == "die" and self.training:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.training and os.environ.get("PROBE_SLEEP_S"):
            time.sleep(float(os.environ["PROBE_SLEEP_S"]))
        x = torch.relu(self.conv(images * self._mask(images)))  # (B, width, H, W)
        logits = self.head(x.mean(dim=(-2, -1)))
        if self.behaviour == "nan" and self.training:
            logits = logits * float("nan")
        return logits

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        return self._mask(images)[:, 0]

    def k_bounds(self) -> tuple[int, int]:
        return (1, self.pixels)

    @property
    def k(self) -> float:
        return float(self._k)

    def set_k(self, k: int) -> None:
        self._k = int(min(max(k, 1), self.pixels))

    def analytic_flops(self, images: torch.Tensor) -> float:
        h, w = images.shape[-2:]
        conv = 2 * self.conv.in_channels * self.conv.out_channels * 9 * h * w
        return float(conv + 2 * self.head.in_features * self.head.out_features)


if NAME not in strategy_names():
    register_strategy(
        NAME,
        params={
            "width": ParamSpec("int", low=1, high=64, default=4),
            "k_fraction": ParamSpec("float", low=0.01, high=1.0, default=0.5),
            "behaviour": ParamSpec("choice", choices=("ok", "raise", "nan", "die", "by_trial"), default="ok"),
        },
        doc="test-only probe",
    )(ProbeNet)


def write_space(
    directory: Path,
    *,
    name: str = "probe",
    trials: int = 3,
    backend: str = "optuna",
    behaviour: str | list[str] = "ok",
    epochs: int = 1,
    max_flops: float | None = None,
    max_concurrent: int = 1,
    extra_objectives: str = "",
    train: int = 64,
) -> Path:
    """A tiny space file over probe_net (16 px synthetic cells, 64 training images)."""
    behaviour_yaml = behaviour if isinstance(behaviour, str) else "[" + ", ".join(behaviour) + "]"
    constraints = f"constraints: {{max_flops: {max_flops}}}\n" if max_flops else ""
    text = textwrap.dedent(f"""\
        name: {name}
        seed: 0
        data: {{source: synthetic, image_size: 16, train: {train}, val: 32, test: 32, augment: true}}
        objectives: {{accuracy: maximize, flops: minimize{extra_objectives}}}
        training: {{epochs: {epochs}, batch_size: 32, lr: {{log: [1.0e-3, 1.0e-2]}}, warmup_epochs: 0.5}}
        search:
          trials: {trials}
          sampler: {{name: tpe, seed: 0}}
          backend: {backend}
          max_concurrent: {max_concurrent}
          resources: {{cpu: 1, gpu: 0}}
        space:
          strategy:
            {NAME}:
              width: {{int: [2, 8]}}
              k_fraction: {{float: [0.1, 0.9]}}
              behaviour: {behaviour_yaml}
        """) + constraints
    path = Path(directory) / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


REPO = Path(__file__).resolve().parents[2]


def set_env(monkeypatch: object) -> None:
    """Make this module load in every process a test starts: CLI subprocesses and Ray workers run
    in other directories, so the repository goes on PYTHONPATH and the module into CELLSPARSE_PLUGINS."""
    paths = [str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
    monkeypatch.setenv("CELLSPARSE_PLUGINS", plugins_env())


def plugins_env() -> str:
    """CELLSPARSE_PLUGINS with this module first (keeps any modules already listed)."""
    existing = os.environ.get("CELLSPARSE_PLUGINS", "")
    listed = [m for m in existing.split(",") if m and m != MODULE]
    return ",".join([MODULE, *listed])


def read_trials(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(Path(run_dir) / "trials.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def journal_trials(run_dir: Path, name: str = "probe") -> list:
    import optuna

    from cellsparse.rundir import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(run_dir)).get_trials()


def run_search_cli(capsys: object, *args: str | Path) -> tuple[int, str, str]:
    """``runner.search.main(args)``: (exit status, stdout, stderr)."""
    status = search_main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def finished_run_in_subprocess(work: Path, trials: int = 2) -> tuple[Path, Path]:
    """A search of ``trials`` probe trials run to the end by ``python -m runner.search`` in a process of
    its own (as a user runs it): (its space file, its run directory)."""
    space = write_space(work, trials=trials)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "CELLSPARSE_PLUGINS": "tests.runner.search_fixtures"}
    done = subprocess.run([sys.executable, "-m", "runner.search", "--space", str(space), "--out", str(work / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return space, work / "run"
