"""k-adaptation rules: how the number of kept pixels / patches / regions moves during training.

Why a rule at all: a sparse model's cost grows with k (quadratically for attention over kept
tokens), so the search wants the smallest k that still classifies well. The rules are a search
dimension of their own (``k_rule`` in a config):

``fixed``
    k stays at the configured value.
``loss_trend``
    The SparseAttnNet reconstruction (methods.md §2.6): compare the mean loss of the last
    ``k_patience`` epochs with the ``k_patience`` before them. While it improves by more than
    ``IMPROVE_THRESHOLD`` (relative), shrink k by ``k_step``; when it worsens by more than
    ``WORSEN_THRESHOLD``, grow k by ``GROW_OVER_SHRINK * k_step`` and do not shrink again for
    ``k_patience`` epochs; on a plateau hold. k stays in [k_min, k_max], where k_min is
    ``k_min_fraction`` of the initial k (never below the model's lowest k) and k_max the model's
    highest k.
``schedule``
    k follows a cosine from the initial k to ``k_final_fraction`` of it, reached exactly at the
    first frozen epoch. Cosine rather than linear: it spends the early epochs, when the selector is
    still poor, near the initial k, and eases into the final k so the last change is small.
``ratio`` / ``top_p``
    Learned per-image rules. Their ``KRule`` is constant at the configured k, which is the cap the
    model selects up to; how many of those an image really keeps comes from the model through
    :func:`per_image_k` (and, for ``ratio``, is steered by :func:`ratio_loss` toward
    ``k_target_ratio``).

Freezing: the last ``max(1, round(k_freeze_fraction * epochs))`` epochs all run at one k (the
final k), so the model has trained at the k its objectives are measured at, and pruners that
compare trials late in training compare settled costs (methods.md §2.8.4).

Lifecycle inside a trial::

    rule = make_k_rule(config, k_init=config_k, k_bounds=model.k_bounds(), epochs=epochs)
    model.set_k(rule.k)                        # before the first epoch
    for epoch in range(epochs):
        loss = train_one_epoch(...)            # that epoch's mean loss
        model.set_k(rule.step(epoch, loss))    # the k for the next epoch
    # checkpoints save rule.state_dict(); a resumed trial rebuilds the rule from the same config
    # and calls rule.load_state_dict(state), then continues with the same sequence of k.

This module is pure torch (the per-image helpers) plus the standard library.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from search_space.errors import UserError
from search_space.params import ParamSpec

#: Relative improvement of the windowed loss above which ``loss_trend`` shrinks k (methods.md §2.6).
IMPROVE_THRESHOLD = 0.01
#: Relative worsening of the windowed loss above which ``loss_trend`` grows k back.
WORSEN_THRESHOLD = 0.02
#: ``loss_trend`` grows by this multiple of ``k_step``: pixels are given back faster than taken.
GROW_OVER_SHRINK = 1.5

PER_IMAGE_RULES = ("ratio", "top_p")

K_RULE_PARAMS: dict[str, ParamSpec] = {
    "k_rule": ParamSpec(
        "choice",
        choices=("fixed", "loss_trend", "schedule", "ratio", "top_p"),
        doc="how k moves during training",
    ),
    "k_final_fraction": ParamSpec("float", low=0.05, high=1.0, doc="schedule: final k as a fraction of the initial k"),
    "k_min_fraction": ParamSpec("float", low=0.02, high=1.0, doc="loss_trend: lowest k as a fraction of the initial k"),
    "k_step": ParamSpec("float", low=0.01, high=0.5, doc="loss_trend: relative shrink per step (grow is 1.5x this)"),
    "k_patience": ParamSpec("int", low=1, high=10, doc="loss_trend: epochs in each loss window"),
    "k_freeze_fraction": ParamSpec("float", low=0.0, high=0.9, doc="fraction of the epochs at the end that run at a frozen k"),
    "k_target_ratio": ParamSpec("float", low=0.05, high=0.9, doc="ratio: target mean keep fraction per image"),
    "k_top_p": ParamSpec("float", low=0.5, high=0.99, doc="top_p: cumulative score mass each image keeps"),
}

K_RULE_DEFAULTS: dict[str, Any] = {
    "k_rule": "loss_trend",
    "k_final_fraction": 0.5,
    "k_min_fraction": 0.25,
    "k_step": 0.1,
    "k_patience": 3,
    "k_freeze_fraction": 0.2,
    "k_target_ratio": 0.3,
    "k_top_p": 0.8,
}


class KRuleError(UserError, ValueError):
    """A k-rule setting in a config is unknown or out of range."""


class KRule(ABC):
    """A k-adaptation controller: holds the current k and moves it once per epoch.

    Subclasses set ``name`` (the ``k_rule`` value), list the config keys they read in ``keys``, and
    implement :meth:`step`. Everything :meth:`step` depends on besides the constructor arguments
    must live in :meth:`state_dict`, so that a rebuilt rule plus its state continues identically.
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()
    per_image: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int) -> None:
        self.k_init = int(k_init)
        self.k_bounds = (int(k_bounds[0]), int(k_bounds[1]))
        self.epochs = int(epochs)
        frozen = max(1, round(float(config.get("k_freeze_fraction", 0.0)) * self.epochs))
        #: The first epoch that runs at the final k; ``step`` never changes k from this epoch on.
        self.freeze_epoch = max(0, self.epochs - frozen)
        self._k = self.k_init
        self._last_epoch = -1

    @property
    def k(self) -> int:
        """The k to use for the next epoch (or the current one, inside an epoch)."""
        return self._k

    @abstractmethod
    def step(self, epoch: int, loss: float) -> int:
        """Record ``epoch``'s mean loss and return the k for epoch ``epoch + 1``."""

    def _advance(self, epoch: int) -> None:
        if epoch <= self._last_epoch:
            raise ValueError(f"{self.name}: step({epoch}) after step({self._last_epoch}); epochs must increase")
        self._last_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state (goes into checkpoints)."""
        return {"rule": self.name, "k": self._k, "last_epoch": self._last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned from a rule built with the same config."""
        if state.get("rule") != self.name:
            raise KRuleError(f"k-rule state is for {state.get('rule')!r}, but the config's k_rule is {self.name!r}")
        self._k = int(state["k"])
        self._last_epoch = int(state["last_epoch"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self._k}, bounds={self.k_bounds}, freeze_epoch={self.freeze_epoch})"


_RULES: dict[str, type[KRule]] = {}


def _register(cls: type[KRule]) -> type[KRule]:
    if cls.name in _RULES:
        raise ValueError(f"k rule {cls.name!r} is registered twice")
    _RULES[cls.name] = cls
    return cls


def k_rule_names() -> list[str]:
    """Names of every k rule, in the order of ``K_RULE_PARAMS['k_rule'].choices``."""
    return list(_RULES)


@_register
class FixedRule(KRule):
    """k never moves."""

    name = "fixed"

    def step(self, epoch: int, loss: float) -> int:
        self._advance(epoch)
        return self._k


@_register
class LossTrendRule(KRule):
    """Shrink k while the windowed loss keeps improving, grow it back when it worsens (methods.md §2.6)."""

    name = "loss_trend"
    keys = ("k_min_fraction", "k_step", "k_patience", "k_freeze_fraction")

    def __init__(self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int) -> None:
        super().__init__(config, k_init=k_init, k_bounds=k_bounds, epochs=epochs)
        self.k_min = min(self.k_init, max(self.k_bounds[0], math.ceil(config["k_min_fraction"] * self.k_init)))
        self.k_max = self.k_bounds[1]
        self.shrink = float(config["k_step"])
        self.grow = GROW_OVER_SHRINK * self.shrink
        self.window = int(config["k_patience"])
        self._history: list[float] = []  # per-epoch mean losses (finite ones only)
        self._cooldown = 0  # epochs left during which k may not shrink (after a grow)

    def trend(self) -> float | None:
        """Relative improvement of the last window's mean loss over the window before, or None."""
        if len(self._history) < 2 * self.window:
            return None
        now = sum(self._history[-self.window :]) / self.window
        prev = sum(self._history[-2 * self.window : -self.window]) / self.window
        return (prev - now) / max(abs(prev), 1e-12)

    def step(self, epoch: int, loss: float) -> int:
        self._advance(epoch)
        if math.isfinite(loss):  # a non-finite loss would poison two windows; the trial reports it
            self._history.append(float(loss))
        if epoch >= self.freeze_epoch:
            return self._k
        self._cooldown = max(0, self._cooldown - 1)
        trend = self.trend()
        if trend is None:
            return self._k
        if trend > IMPROVE_THRESHOLD and self._cooldown == 0:
            # 1e-9 keeps k * (1 - 0.1) = 8.999999 from flooring to 8 when k = 10.
            smaller = min(self._k - 1, math.floor(self._k * (1.0 - self.shrink) + 1e-9))
            self._k = max(self.k_min, smaller)
        elif trend < -WORSEN_THRESHOLD:
            larger = max(self._k + 1, math.ceil(self._k * (1.0 + self.grow) - 1e-9))
            self._k = min(self.k_max, larger)
            self._cooldown = self.window
        return self._k

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self._history), "cooldown": self._cooldown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._history = [float(x) for x in state["history"]]
        self._cooldown = int(state["cooldown"])


@_register
class ScheduleRule(KRule):
    """Cosine decay from the initial k to ``k_final_fraction`` of it, reached at ``freeze_epoch``."""

    name = "schedule"
    keys = ("k_final_fraction", "k_freeze_fraction")

    def __init__(self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int) -> None:
        super().__init__(config, k_init=k_init, k_bounds=k_bounds, epochs=epochs)
        lo, hi = self.k_bounds
        self.k_final = min(self.k_init, max(lo, min(hi, round(config["k_final_fraction"] * self.k_init))))
        self._k = self.k_at(0)

    def k_at(self, epoch: int) -> int:
        """The k that epoch ``epoch`` runs at."""
        t = 1.0 if epoch >= self.freeze_epoch else epoch / self.freeze_epoch
        return round(self.k_final + (self.k_init - self.k_final) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def step(self, epoch: int, loss: float) -> int:
        self._advance(epoch)
        self._k = self.k_at(epoch + 1)
        return self._k


class _PerImageRule(KRule):
    """Constant cap; the per-image count comes from the model (see :func:`per_image_k`)."""

    per_image = True

    def step(self, epoch: int, loss: float) -> int:
        self._advance(epoch)
        return self._k


@_register
class RatioRule(_PerImageRule):
    """DynamicViT-style learned keep decisions, steered toward ``k_target_ratio`` by :func:`ratio_loss`."""

    name = "ratio"
    keys = ("k_target_ratio",)


@_register
class TopPRule(_PerImageRule):
    """Each image keeps its highest scores up to ``k_top_p`` of its total score mass."""

    name = "top_p"
    keys = ("k_top_p",)


def _setting(config: dict[str, Any], key: str) -> Any:
    """``config[key]`` (or its default), checked against ``K_RULE_PARAMS``."""
    value = config.get(key, K_RULE_DEFAULTS[key])
    problem = K_RULE_PARAMS[key].check(value)
    if problem:
        raise KRuleError(f"config key {key}={value!r} must be {problem} ({K_RULE_PARAMS[key].doc})")
    return value


def rule_keys(name: str) -> tuple[str, ...]:
    """The config keys rule ``name`` reads (besides ``k_rule``): the others are not sampled for it."""
    if name not in _RULES:
        raise KRuleError(f"unknown k_rule {name!r}; valid: {', '.join(_RULES)}")
    return _RULES[name].keys


def k_rule_defaults(name: str | None = None) -> dict[str, Any]:
    """``k_rule`` plus the defaults of just the keys that rule reads (the default rule if None)."""
    name = name or K_RULE_DEFAULTS["k_rule"]
    return {"k_rule": name, **{key: K_RULE_DEFAULTS[key] for key in rule_keys(name)}}


def make_k_rule(config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int) -> KRule:
    """Build the rule named by ``config['k_rule']``; missing k-rule keys take ``K_RULE_DEFAULTS``."""
    name = config.get("k_rule", K_RULE_DEFAULTS["k_rule"])
    if name not in _RULES:
        raise KRuleError(f"unknown k_rule {name!r}; valid: {', '.join(_RULES)}")
    lo, hi = int(k_bounds[0]), int(k_bounds[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"k_bounds must satisfy 1 <= low <= high, but got {k_bounds}")
    if not lo <= k_init <= hi:
        raise KRuleError(f"initial k={k_init} is outside the model's k bounds [{lo}, {hi}]")
    if epochs < 1:
        raise KRuleError(f"epochs must be >= 1, but got {epochs}")
    cls = _RULES[name]
    settings = {key: _setting(config, key) for key in cls.keys}
    return cls(settings, k_init=int(k_init), k_bounds=(lo, hi), epochs=int(epochs))


def per_image_k(scores: torch.Tensor, *, rule: str, config: dict[str, Any], k_max: int, k_min: int = 1) -> torch.Tensor:
    """How many candidates each image keeps under a per-image rule: (B, N) scores -> (B,) int64.

    ``top_p``: the fewest highest scores whose sum reaches ``k_top_p`` of the image's total score.
    ``ratio``: the expected number of keeps, round(sum of keep probabilities). Counting scores
    above 0.5 instead collapses k once the ratio loss has pulled every probability toward a
    target below 0.5; the expected count follows the target (DynamicViT's keep ratio).
    Both are clamped to [k_min, k_max]: a model passes its smallest useful k as ``k_min`` so an
    untrained scorer (no score above 0.5 yet) still sees a few candidates. Static shapes, no
    ``.item()`` and no branching on values, so ``torch.export`` traces it.
    """
    if rule == "top_p":
        p = float(_setting(config, "k_top_p"))
        ranked = scores.sort(dim=-1, descending=True).values  # (B, N)
        before = ranked.cumsum(dim=-1) - ranked  # score mass of the higher-ranked candidates
        total = ranked.sum(dim=-1, keepdim=True)  # (B, 1)
        count = (before < p * total).sum(dim=-1)
    elif rule == "ratio":
        count = scores.sum(dim=-1).round()
    else:
        raise KRuleError(f"k_rule {rule!r} has no per-image k; per-image rules: {', '.join(PER_IMAGE_RULES)}")
    return count.clamp(min=int(k_min), max=int(k_max)).long()


def ratio_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """DynamicViT's ratio loss: (mean keep score of each image - target)², averaged over the batch."""
    return (scores.mean(dim=-1) - target).pow(2).mean()
