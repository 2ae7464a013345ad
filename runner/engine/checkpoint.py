"""A finished trial, rebuilt from its directory: the network at its final k with its trained weights.

Export, the benchmarks and anything else that serves a trained model read ``runs/<name>/trials/<n>/``
through :func:`load_trained`, so there is one place that knows how the runner stores a trial:

    config.json   the flat config; ``build_model(config, in_channels, num_classes, image_size)``
    meta.json     in_channels, num_classes, image_size, class_names, mean, std, modality, source, k_final
    metrics.json  the final figures; written last, so its presence marks a finished trial
    model.pt      the state_dict (loaded with ``weights_only=True``: a checkpoint cannot run code)

The k a model runs at is saved in its state_dict (``k_value``), so loading the weights restores it.
For weights saved before that, rules that move k during training (fixed, loss_trend, schedule) left
the final k in ``k_final``, which is set after loading; per-image rules (ratio, top_p) keep the
candidate cap the model was built with and record the *mean kept count* as ``k_final``, so for them
the built k is kept (setting the mean would change the model).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellsparse.errors import UserError
from cellsparse.files import read_json_object
from cellsparse.rundir import CONFIG_FILE, META_FILE, METRICS_FILE, WEIGHTS_FILE
from search_space.build import build_model
from search_space.k_rules import k_rule_class
from search_space.strategies import CellClassifier

#: meta.json keys export and prediction cannot do without.
META_KEYS = ("in_channels", "num_classes", "image_size", "class_names", "mean", "std")


@dataclass
class TrainedTrial:
    """A trial's saved files, and its model rebuilt in eval mode on the CPU."""

    number: int
    directory: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    metrics: dict[str, Any]
    model: CellClassifier

    @property
    def strategy(self) -> str:
        return str(self.config["strategy"])

    @property
    def k(self) -> float | None:
        """The k the rebuilt model runs at (None for dense models)."""
        return None if self.model.k_bounds() is None else float(self.model.k)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return read_json_object(path, fix="the trial directory is damaged", missing=f"{path}: missing; {what}")


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in ``path`` (weights only); UserError when the file is absent, corrupt or truncated."""
    if not path.is_file():
        raise UserError(f"{path}: missing; the trial finished without saving its weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message leads with advice to load with weights_only=False: never passed on
        if "GLOBAL" not in str(err):  # not a checkpoint at all
            raise UserError(f"{path}: corrupt or truncated model file (not a readable torch checkpoint); re-run the "
                            "trial or copy it again") from None
        raise UserError(f"{path}: holds Python objects besides tensors, which are never unpickled here (a checkpoint "
                        "cannot run code); re-run the trial or copy the weights the runner saved") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = _first_line(err)
        raise UserError(f"{path}: corrupt or truncated model file ({reason}); re-run the trial or copy it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state_dict of tensors; expected the weights the runner saves")
    return state


def has_per_image_k(config: dict[str, Any]) -> bool:
    """Whether the config's k rule picks a count per image (its k is a fixed cap, k_final a mean)."""
    return isinstance(config.get("k_rule"), str) and k_rule_class(config["k_rule"]).per_image


def _final_k(config: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any]) -> int | None:
    """The k to set after loading, or None to keep the built k (per-image rules, no k recorded)."""
    if has_per_image_k(config):
        return None
    k = meta.get("k_final", metrics.get("k_final"))
    return None if k is None else int(round(float(k)))


def load_trained(trial_dir: Path, number: int | None = None) -> TrainedTrial:
    """Rebuild the trial in ``trial_dir``: config -> network, weights loaded, final k set, eval mode.

    Raises UserError naming the file when the trial is unfinished (no metrics.json), was never
    trained (infeasible), or a file is missing, unreadable or does not match the config.
    """
    trial_dir = Path(trial_dir)
    if number is None:
        number = int(trial_dir.name) if trial_dir.name.isdigit() else -1
    if not trial_dir.is_dir():
        raise UserError(f"trial {number}: no trial directory {trial_dir}; the run directory may be partly copied")
    metrics = _read_json(trial_dir / METRICS_FILE, f"trial {number} is not complete (it failed or is still running)")
    if metrics.get("feasible") is False:
        raise UserError(f"trial {number} is infeasible: it was over a constraint and never trained; pick another trial")
    config = _read_json(trial_dir / CONFIG_FILE, "the trial's config is needed to rebuild it")
    meta = _read_json(trial_dir / META_FILE, "the trial's input shape, classes and normalisation are needed")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise UserError(f"{trial_dir / 'meta.json'}: missing {missing}; the trial was saved by an older runner")
    model = build_model(config, int(meta["in_channels"]), int(meta["num_classes"]), int(meta["image_size"]))
    state = read_state_dict(trial_dir / WEIGHTS_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(
            f"{trial_dir / 'model.pt'}: the weights do not fit the network config.json describes "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None
    k = _final_k(config, meta, metrics)
    if k is not None and model.k_bounds() is not None:
        try:
            model.set_k(k)
        except ValueError as err:
            raise UserError(f"trial {number}: its final k={k} does not fit the rebuilt network ({err})") from None
    model.eval()
    return TrainedTrial(number=number, directory=trial_dir, config=config, meta=meta, metrics=metrics, model=model)
