"""A plugin objective for the one-entry test: registered on import, as a user's own would be."""

from __future__ import annotations

from objectives import Objective, get_objective, objective_names, register_objective


def _conv_weights(model, images, labels) -> float:
    """Weights in the model's first conv layer: known before training, so a constraint may bound it."""
    return float(sum(p.numel() for n, p in model.named_parameters() if n.startswith("conv")))


if "conv_weights" not in objective_names():
    register_objective(Objective("conv_weights", "minimize", "weights", "toy conv weights", _conv_weights, bounded=True))

TOY = get_objective("conv_weights")
