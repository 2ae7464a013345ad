"""k-adaptation rules: how the number of kept pixels / patches / regions moves during training.

Why a rule at all: a sparse model's cost grows with k (quadratically for attention over kept
tokens), so the search wants the smallest k that still classifies well. The rules are a search
dimension of their own (``k_rule`` in a config):

``fixed``
    k stays at the configured value.
``loss_trend``
    The SparseAttnNet reconstruction (methods.md §2.6): k shrinks while the loss allows it and
    grows back when the loss worsens, deciding ``k_decisions`` times per epoch so k settles inside
    a short budget. Before each decision the trial scores the last ``PROBE_STEPS`` training batches
    in eval mode at the current k and at the candidate ``(1 - k_step) * k`` (:meth:`KRule.probe`):
    the candidate's relative loss cost, averaged over every probe of the same candidate (up to an
    epoch's). The shrinks taken share one budget, ``k_tolerance``: k shrinks while the summed
    costs of the shrinks so far plus this one stay within it. (Each
    shrink judged alone cost 1-2% and twelve of them cost 5 points of accuracy; judging them
    against the initial k fails too, since a model trained at a smaller k does worse at the
    initial k than at its own.) The rule
    also follows an exponential moving average (EMA) of the batches' classification loss; when it
    rose since the last decision by more than ``WORSEN_Z`` times its noise (estimated from the
    batch-to-batch spread), the last shrink hurt: k grows by ``GROW_OVER_SHRINK * k_step`` and does
    not shrink again for an epoch. The first epoch runs at the initial k (the EMA and the selector
    warm up). k stays in [k_min, k_max], where k_min is ``k_min_fraction`` of the initial k (never
    below the model's lowest k) and k_max the model's highest k.
    Why paired probes: the training loss falls throughout a cosine schedule, so a rule that shrinks
    "while the loss improves" shrinks to its floor (or, on per-epoch windows, acts as a lagged
    schedule), and a 64-image batch's loss varies by ~15%, far more than a 10% change of k moves
    it. The same batch at two k differs by the k alone, so a few batches tell whether k can shrink.
``schedule``
    k follows a cosine from the initial k to ``k_final_fraction`` of it, reached exactly at the
    first frozen epoch, changing at epoch boundaries. Cosine rather than linear: it spends the
    early epochs, when the selector is still poor, near the initial k, and eases into the final k
    so the last change is small.
``ratio`` / ``top_p``
    Learned per-image rules. Their ``KRule`` is constant at the configured k, which is the cap the
    model selects up to; how many of those an image really keeps comes from the model through
    :func:`per_image_k` (and, for ``ratio``, is steered by :func:`ratio_loss` toward
    ``k_target_ratio``).

Freezing: the last ``max(1, round(k_freeze_fraction * epochs))`` epochs all run at one k (the
final k), so the model has trained at the k its objectives are measured at, and pruners that
compare trials late in training compare settled costs (methods.md §2.8.4).

Lifecycle inside a trial::

    rule = make_k_rule(config, k_init=config_k, k_bounds=model.k_bounds(), epochs=epochs,
                       steps_per_epoch=steps_per_epoch)
    model.set_k(rule.k)                        # before the first step
    for step in range(epochs * steps_per_epoch):
        loss = train_one_step(...)             # that batch's classification loss
        probe = None                           # or, when rule.probe(step) names two k: the batch's
                                               # eval loss at each
        model.set_k(rule.update(step, loss, probe))  # the k for the next step
    rule.trace                                 # the decision points: step, k, smoothed loss
    # checkpoints save rule.state_dict(); a resumed trial rebuilds the rule from the same config
    # and calls rule.load_state_dict(state), then continues with the same sequence of k.

This module is pure torch (the per-image helpers) plus the standard library.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from cellsparse.errors import UserError
from cellsparse.registry import Registry
from search_space.params import ParamSpec

#: ``loss_trend`` grows k back when the smoothed loss rose since the last decision by more than this
#: many standard deviations of its noise: beyond noise, so the last shrink hurt.
WORSEN_Z = 3.0
#: ``loss_trend`` compares the candidate smaller k with the current one on the last this many
#: batches before each decision.
PROBE_STEPS = 2
#: ``loss_trend`` grows by this multiple of ``k_step``: pixels are given back faster than taken.
GROW_OVER_SHRINK = 1.5

#: The rule a config that names none runs.
DEFAULT_K_RULE = "loss_trend"
#: Read by every rule whose k moves (``loss_trend``, ``schedule``): one declaration, two rules.
FREEZE_PARAM = ParamSpec("float", low=0.0, high=0.9, default=0.2,
                         doc="fraction of the epochs at the end that run at a frozen k")


class KRuleError(UserError, ValueError):
    """A k-rule setting in a config is unknown or out of range."""


class KRule(ABC):
    """A k-adaptation controller: holds the current k and may move it after any training step.

    Subclasses set ``name`` (the ``k_rule`` value), declare the config keys they read in ``params``
    (range, default and doc, once: the space language, the sampler, the docs and the model read them
    from there), say whether the count is ``per_image``, and implement :meth:`_update`. Everything it
    depends on besides the constructor arguments must live in :meth:`state_dict`, so that a rebuilt
    rule plus its state continues identically. Rules that decide from the loss append their decision
    points to ``trace`` (for the trial history).
    """

    name: ClassVar[str]
    params: ClassVar[dict[str, ParamSpec]] = {}
    per_image: ClassVar[bool] = False

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys this rule reads (besides ``k_rule``)."""
        return tuple(cls.params)

    @classmethod
    def settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        """This rule's keys from ``config`` (its defaults where missing), each checked against its range."""
        out = {}
        for key, spec in cls.params.items():
            value = config.get(key, spec.default)
            problem = spec.check(value)
            if problem:
                raise KRuleError(f"config key {key}={value!r} must be {problem} ({spec.doc})")
            out[key] = value
        return out

    def __init__(
        self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int, steps_per_epoch: int = 1
    ) -> None:
        self.k_init = int(k_init)
        self.k_bounds = (int(k_bounds[0]), int(k_bounds[1]))
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        frozen = max(1, round(float(config.get("k_freeze_fraction", 0.0)) * self.epochs))
        #: The first epoch that runs at the final k; k never changes from this epoch on.
        self.freeze_epoch = max(0, self.epochs - frozen)
        self._k = self.k_init
        self._last_step = -1
        #: Decision points, oldest first: {"step", "k" (from the next step on), "loss" (smoothed)}.
        self.trace: list[dict[str, float]] = []

    @property
    def k(self) -> int:
        """The k to use for the next training step."""
        return self._k

    def probe(self, step: int) -> tuple[int, int] | None:
        """Two k this rule wants compared on step ``step``'s batch, (reference, candidate), or None;
        the trial scores the batch at both after the step's update and passes the losses to :meth:`update`."""
        return None

    def update(self, step: int, loss: float, probe: tuple[float, float] | None = None) -> int:
        """Record training step ``step``'s classification loss (a batch mean; steps count from 0
        over the whole trial) and return the k for step ``step + 1``. ``probe``, when
        :meth:`probe` asked for one: the batch's loss in eval mode at its reference and at its
        candidate k (the same images, so their difference is nearly free of batch noise)."""
        if step <= self._last_step:
            raise ValueError(f"{self.name}: update({step}) after update({self._last_step}); steps must increase")
        self._last_step = step
        self._update(step, loss, probe)
        return self._k

    @abstractmethod
    def _update(self, step: int, loss: float, probe: tuple[float, float] | None) -> None:
        """Move ``self._k`` (or not) after ``step``; ``update`` has checked the order."""

    def epoch_end(self, step: int) -> int | None:
        """The epoch that starts after ``step`` if ``step`` ends one, else None."""
        return (step + 1) // self.steps_per_epoch if (step + 1) % self.steps_per_epoch == 0 else None

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state (goes into checkpoints)."""
        return {"rule": self.name, "k": self._k, "last_step": self._last_step, "trace": [dict(t) for t in self.trace]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned from a rule built with the same config."""
        if state.get("rule") != self.name:
            raise KRuleError(f"k-rule state is for {state.get('rule')!r}, but the config's k_rule is {self.name!r}")
        self._k = int(state["k"])
        self._last_step = int(state["last_step"])
        self.trace = [dict(t) for t in state["trace"]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self._k}, bounds={self.k_bounds}, freeze_epoch={self.freeze_epoch})"


_RULES: Registry[type[KRule]] = Registry("k_rule", unknown=KRuleError)


def _register(cls: type[KRule]) -> type[KRule]:
    return _RULES.add(cls.name, cls)


def k_rule_names() -> list[str]:
    """Names of every k rule, in the order of ``K_RULE_PARAMS['k_rule'].choices``."""
    return _RULES.names()


def k_rule_class(name: str) -> type[KRule]:
    """The rule called ``name``; KRuleError naming the valid ones for an unknown name."""
    return _RULES.get(name)


@_register
class FixedRule(KRule):
    """k never moves."""

    name = "fixed"

    def _update(self, step: int, loss: float, probe: tuple[float, float] | None) -> None:
        pass


@_register
class LossTrendRule(KRule):
    """Shrink k while the shrinks' summed loss costs stay within ``k_tolerance``, grow it back when the
    smoothed loss worsens beyond noise (methods.md §2.6), deciding ``k_decisions`` times per epoch."""

    name = "loss_trend"
    params = {
        "k_min_fraction": ParamSpec("float", low=0.02, high=1.0, default=0.25,
                                    doc="loss_trend: lowest k as a fraction of the initial k"),
        "k_step": ParamSpec("float", low=0.01, high=0.5, default=0.1,
                            doc="loss_trend: relative shrink per step (grow is 1.5x this)"),
        "k_decisions": ParamSpec("int", low=1, high=16, default=4, doc="loss_trend: k decisions per epoch"),
        "k_tolerance": ParamSpec("float", low=0.0, high=0.5, default=0.03,
                                 doc="loss_trend: largest relative rise of the loss all shrinks together may cost"),
        "k_freeze_fraction": FREEZE_PARAM,
    }

    def __init__(
        self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int, steps_per_epoch: int = 1
    ) -> None:
        super().__init__(config, k_init=k_init, k_bounds=k_bounds, epochs=epochs, steps_per_epoch=steps_per_epoch)
        self.k_min = min(self.k_init, max(self.k_bounds[0], math.ceil(config["k_min_fraction"] * self.k_init)))
        self.k_max = self.k_bounds[1]
        self.shrink = float(config["k_step"])
        self.grow = GROW_OVER_SHRINK * self.shrink
        self.tolerance = float(config["k_tolerance"])
        decisions = int(config["k_decisions"])
        #: Steps between decisions (at least 1); the loss EMA's time constant is the same.
        self.interval = max(1, round(self.steps_per_epoch / decisions))
        self.cooldown_decisions = math.ceil(self.steps_per_epoch / self.interval)  # one epoch
        self.alpha = 1.0 / (self.interval + 1)  # EMA weight of the newest batch (span = interval steps)
        self.freeze_step = self.freeze_epoch * self.steps_per_epoch
        # state
        self._ema = 0.0  # bias-corrected by dividing by (1 - (1 - alpha)^n)
        self._var = 0.0  # EMA of half the squared step-to-step change: the batch noise, not the trend
        self._n = 0  # finite losses seen
        self._last = 0.0  # the last finite loss
        self._ref: float | None = None  # smoothed loss at the last decision
        self._costs: list[float] = []  # relative loss cost of the candidate k on this interval's probes
        self._spent = 0.0  # the summed costs of the shrinks taken: what they cost the loss in all
        self._cooldown = 0  # decisions left during which k may not shrink (after a grow)

    def smoothed(self) -> tuple[float, float]:
        """(EMA of the loss, standard deviation of that EMA's noise), bias-corrected."""
        ema = self._ema / (1.0 - (1.0 - self.alpha) ** self._n)
        var = self._var / (1.0 - (1.0 - self.alpha) ** (self._n - 1)) if self._n > 1 else 0.0
        # the EMA averages about (2 - a) / a batches: its noise is the batches' spread shrunk by that
        return ema, math.sqrt(var * self.alpha / (2.0 - self.alpha))

    def _candidate(self) -> int:
        # 1e-9 keeps k * (1 - 0.1) = 8.999999 from flooring to 8 when k = 10.
        return max(self.k_min, min(self._k - 1, math.floor(self._k * (1.0 - self.shrink) + 1e-9)))

    def _deciding(self, step: int) -> bool:
        """Whether this rule may still move k after ``step``: from the end of the warm-up epoch to the
        end of the last epoch before the freeze (that decision sets the frozen k)."""
        return self.steps_per_epoch <= step + 1 <= self.freeze_step

    def probe(self, step: int) -> tuple[int, int] | None:
        to_decision = -(step + 1) % self.interval  # steps after this one until the next decision
        if to_decision >= PROBE_STEPS or not self._deciding(step + to_decision) or self._cooldown or self._ref is None:
            return None
        candidate = self._candidate()
        return (self._k, candidate) if candidate < self._k else None

    def _update(self, step: int, loss: float, probe: tuple[float, float] | None) -> None:
        if math.isfinite(loss):  # a non-finite loss would poison the EMA; the trial reports it
            if self._n:
                self._var = (1 - self.alpha) * self._var + self.alpha * 0.5 * (loss - self._last) ** 2
            self._ema = (1 - self.alpha) * self._ema + self.alpha * float(loss)
            self._last = float(loss)
            self._n += 1
        if probe is not None and all(math.isfinite(v) for v in probe):
            at_reference, at_candidate = probe
            self._costs.append((at_candidate - at_reference) / max(abs(at_reference), 1e-3))
        if (step + 1) % self.interval or self._n == 0:
            return
        ema, noise = self.smoothed()
        if not self._deciding(step) or self._ref is None:  # the first epoch only warms up
            self._ref, self._costs = ema, []
            return
        # the rise since the last decision, in units of the noise of a difference of two EMAs
        worse = (ema - self._ref) / max(math.sqrt(2.0) * noise, 1e-12 * abs(ema), 1e-12)
        # the candidate's cost over every probe of it (up to an epoch's): probing the same candidate
        # again and taking it the first time a batch's noise makes it look free shrank k to its floor
        self._costs = self._costs[-PROBE_STEPS * self.cooldown_decisions :]
        cost = sum(self._costs) / len(self._costs) if self._costs else None
        k_before = self._k
        if worse > WORSEN_Z:  # the last move (or the data) hurt: give pixels back, then wait an epoch
            self._k = min(self.k_max, max(self._k + 1, math.ceil(self._k * (1.0 + self.grow) - 1e-9)))
            self._cooldown = self.cooldown_decisions
        elif self._cooldown:
            self._cooldown -= 1
        elif cost is not None and self._spent + max(cost, 0.0) <= self.tolerance:
            self._k = self._candidate()
            self._spent += max(cost, 0.0)
        if self._k != k_before:  # a new candidate: its probes start afresh
            self._costs = []
        self._ref = ema
        point = {"step": step, "k": self._k, "loss": ema, "worsening_z": worse, "probe_cost": cost, "spent": self._spent}
        self.trace.append(point)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "ema": self._ema,
            "var": self._var,
            "n": self._n,
            "last": self._last,
            "ref": self._ref,
            "costs": list(self._costs),
            "spent": self._spent,
            "cooldown": self._cooldown,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._ema, self._var, self._n = float(state["ema"]), float(state["var"]), int(state["n"])
        self._last, self._ref = float(state["last"]), None if state["ref"] is None else float(state["ref"])
        self._costs = [float(c) for c in state["costs"]]
        self._spent = float(state["spent"])
        self._cooldown = int(state["cooldown"])


@_register
class ScheduleRule(KRule):
    """Cosine decay from the initial k to ``k_final_fraction`` of it, reached at ``freeze_epoch``;
    k changes at epoch boundaries."""

    name = "schedule"
    params = {
        "k_final_fraction": ParamSpec("float", low=0.05, high=1.0, default=0.5,
                                      doc="schedule: final k as a fraction of the initial k"),
        "k_freeze_fraction": FREEZE_PARAM,
    }

    def __init__(
        self, config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int, steps_per_epoch: int = 1
    ) -> None:
        super().__init__(config, k_init=k_init, k_bounds=k_bounds, epochs=epochs, steps_per_epoch=steps_per_epoch)
        lo, hi = self.k_bounds
        self.k_final = min(self.k_init, max(lo, min(hi, round(config["k_final_fraction"] * self.k_init))))
        self._k = self.k_at(0)

    def k_at(self, epoch: int) -> int:
        """The k that epoch ``epoch`` runs at."""
        t = 1.0 if epoch >= self.freeze_epoch else epoch / self.freeze_epoch
        return round(self.k_final + (self.k_init - self.k_final) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def _update(self, step: int, loss: float, probe: tuple[float, float] | None) -> None:
        epoch = self.epoch_end(step)
        if epoch is not None:
            self._k = self.k_at(epoch)


class PerImageRule(KRule):
    """Constant cap; how many of its top candidates each image keeps comes from the model's scores.

    A model asks the rule, never its name: :meth:`keep_scores` turns its selector's logits into the
    scores the rule counts, :meth:`count` gives each image's number, :meth:`keep_loss` the training
    term that steers the scores (or None), ``reads_distribution`` whether the scores are a
    distribution over the image's candidates (so a model may distil that distribution), and
    ``samples_keeps`` whether training samples keep decisions from learned keep probabilities
    (DynamicViT), which only a learned scorer provides."""

    per_image = True
    reads_distribution: ClassVar[bool] = False
    samples_keeps: ClassVar[bool] = False

    def _update(self, step: int, loss: float, probe: tuple[float, float] | None) -> None:
        pass

    @classmethod
    @abstractmethod
    def keep_scores(cls, logits: torch.Tensor) -> torch.Tensor:
        """(B, N) selector logits -> the (B, N) scores :meth:`count` reads."""

    @classmethod
    @abstractmethod
    def count(cls, scores: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        """(B, N) scores -> (B,) how many of its highest-scored candidates each image keeps (unclamped)."""

    @classmethod
    def counts(cls, scores: torch.Tensor, settings: dict[str, Any], *, k_max: int, k_min: int = 1) -> torch.Tensor:
        """(B,) int64: :meth:`count` clamped to [k_min, k_max]. ``settings`` as :meth:`settings` returns
        them (a model checks its config once, not in every forward). Static shapes, no ``.item()`` and
        no branching on values, so ``torch.export`` traces it."""
        return cls.count(scores, settings).clamp(min=int(k_min), max=int(k_max)).long()

    @classmethod
    def keep_loss(cls, logits: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor | None:
        """The term that steers the keep scores in training (before its weight), or None."""
        return None

    @classmethod
    def expected_fraction(cls, settings: dict[str, Any]) -> float | None:
        """The share of candidates the rule aims to keep, where it sets one."""
        return None


@_register
class RatioRule(PerImageRule):
    """DynamicViT-style learned keep decisions, steered toward ``k_target_ratio`` by :func:`ratio_loss`.

    The count is the expected number of keeps, round(sum of keep probabilities). Counting scores
    above 0.5 instead collapses k once the ratio loss has pulled every probability toward a target
    below 0.5; the expected count follows the target (DynamicViT's keep ratio)."""

    name = "ratio"
    params = {"k_target_ratio": ParamSpec("float", low=0.05, high=0.9, default=0.3,
                                          doc="ratio: target mean keep fraction per image")}
    samples_keeps = True

    @classmethod
    def keep_scores(cls, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    @classmethod
    def count(cls, scores: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        return scores.sum(dim=-1).round()

    @classmethod
    def keep_loss(cls, logits: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        return ratio_loss(logits.sigmoid(), float(settings["k_target_ratio"]))

    @classmethod
    def expected_fraction(cls, settings: dict[str, Any]) -> float:
        return float(settings["k_target_ratio"])


@_register
class TopPRule(PerImageRule):
    """Each image keeps its highest scores up to ``k_top_p`` of its total score mass: the fewest
    highest scores whose sum reaches it."""

    name = "top_p"
    params = {"k_top_p": ParamSpec("float", low=0.5, high=0.99, default=0.8,
                                   doc="top_p: cumulative score mass each image keeps")}
    reads_distribution = True

    @classmethod
    def keep_scores(cls, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)  # a distribution over the image's candidates

    @classmethod
    def count(cls, scores: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        p = float(settings["k_top_p"])
        ranked = scores.sort(dim=-1, descending=True).values  # (B, N)
        before = ranked.cumsum(dim=-1) - ranked  # score mass of the higher-ranked candidates
        total = ranked.sum(dim=-1, keepdim=True)  # (B, 1)
        return (before < p * total).sum(dim=-1)


def rule_keys(name: str) -> tuple[str, ...]:
    """The config keys rule ``name`` reads (besides ``k_rule``): the others are not sampled for it."""
    return _RULES.get(name).keys()


def k_rule_defaults(name: str | None = None) -> dict[str, Any]:
    """``k_rule`` plus the defaults of just the keys that rule reads (the default rule if None)."""
    cls = _RULES.get(name or DEFAULT_K_RULE)
    return {"k_rule": cls.name, **{key: spec.default for key, spec in cls.params.items()}}


def make_k_rule(
    config: dict[str, Any], *, k_init: int, k_bounds: tuple[int, int], epochs: int, steps_per_epoch: int = 1
) -> KRule:
    """Build the rule named by ``config['k_rule']``; missing k-rule keys take the rule's defaults.
    ``steps_per_epoch`` is how many ``update`` calls make one epoch (1: the rule is fed epoch means)."""
    cls = _RULES.get(config.get("k_rule", DEFAULT_K_RULE))
    lo, hi = int(k_bounds[0]), int(k_bounds[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"k_bounds must satisfy 1 <= low <= high, but got {k_bounds}")
    if not lo <= k_init <= hi:
        raise KRuleError(f"initial k={k_init} is outside the model's k bounds [{lo}, {hi}]")
    if epochs < 1:
        raise KRuleError(f"epochs must be >= 1, but got {epochs}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, but got {steps_per_epoch}")
    return cls(cls.settings(config), k_init=int(k_init), k_bounds=(lo, hi), epochs=int(epochs),
               steps_per_epoch=int(steps_per_epoch))


def per_image_k(scores: torch.Tensor, *, rule: str, config: dict[str, Any], k_max: int, k_min: int = 1) -> torch.Tensor:
    """How many candidates each image keeps under per-image rule ``rule``: (B, N) scores -> (B,) int64.

    ``config`` is checked here; :meth:`PerImageRule.counts` does the counting (clamped to [k_min,
    k_max]: a model passes its smallest useful k as ``k_min`` so an untrained scorer still sees a few
    candidates).
    """
    cls = _RULES.get(rule)
    if not cls.per_image:
        raise KRuleError(f"k_rule {rule!r} has no per-image k; per-image rules: {', '.join(PER_IMAGE_RULES)}")
    return cls.counts(scores, cls.settings(config), k_max=k_max, k_min=k_min)


def ratio_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """DynamicViT's ratio loss: (mean keep score of each image - target)², averaged over the batch."""
    return (scores.mean(dim=-1) - target).pow(2).mean()


# Derived from the rules' own declarations (the built-ins above): the keys a config may carry for
# its k rule, with their ranges and defaults, and the rules whose count is per image.
K_RULE_PARAMS: dict[str, ParamSpec] = {
    "k_rule": ParamSpec("choice", choices=tuple(k_rule_names()), default=DEFAULT_K_RULE, doc="how k moves during training"),
    **{key: spec for name in k_rule_names() for key, spec in k_rule_class(name).params.items()},
}
K_RULE_DEFAULTS: dict[str, Any] = {key: spec.default for key, spec in K_RULE_PARAMS.items()}
PER_IMAGE_RULES: tuple[str, ...] = tuple(name for name in k_rule_names() if k_rule_class(name).per_image)
