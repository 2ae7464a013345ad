"""The training loop of one trial: schedule, files, determinism, reports, k stepping, failures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from runner.data import CellDataset
from runner.engine.trial import NonFiniteLossError, lr_at, record_infeasible, run_trial
from search_space.build import default_config
from search_space.k_rules import k_rule_defaults
from tests.runner import search_fixtures  # noqa: F401 - registers probe_net

FILES = ("config.json", "metrics.json", "history.json", "model.pt", "meta.json", "looked_at.npz")


def tiny_data(n: int = 64, size: int = 16) -> CellDataset:
    """Separable 4-class 16 px images, stored as model input already (mean 0, std 1: normalise is exact)."""
    g = torch.Generator().manual_seed(0)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (count,), generator=g)
        x = 0.3 * torch.randn(count, 3, size, size, generator=g)
        for c in range(4):
            x[y == c, c % 3, : size // 2 if c < 2 else size] += 1.0
        return x, y

    (tx, ty), (vx, vy), (sx, sy) = split(n), split(32), split(32)
    return CellDataset(tx, ty, vx, vy, sx, sy, class_names=["a", "b", "c", "d"], mean=(0.0,) * 3, std=(1.0,) * 3,
                       modality="brightfield", source="synthetic")


def probe_config(**overrides: object) -> dict:
    config = {
        **default_config("probe_net"),
        "k_rule": "schedule",
        "k_final_fraction": 0.5,
        "k_freeze_fraction": 0.0,
        "epochs": 3,
        "batch_size": 32,
        "lr": 5e-3,
        "weight_decay": 0.0,
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
    }
    config.update(overrides)
    return config


def test_lr_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=20) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[20] == pytest.approx(0.0)
    assert lr_at(0, base_lr=1.0, warmup_steps=0, total_steps=10) == 1.0


def test_trial_writes_every_file_and_reports_each_epoch(tmp_path) -> None:
    reports: list[dict] = []
    metrics = run_trial(
        probe_config(),
        data=tiny_data(),
        trial_dir=tmp_path,
        objectives=["accuracy", "flops", "params"],
        augment=False,
        report=reports.append,
    )
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    assert len(reports) == 3
    for row in reports:  # Ray checks every objective in every report
        assert {"epoch", "val_accuracy", "k", "flops", "train_loss", "accuracy", "params"} <= set(row)
        assert all(math.isfinite(row[k]) for k in ("accuracy", "flops", "params", "train_loss"))
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["accuracy"] == metrics["val_accuracy"]
    assert metrics["params"] == metrics["params_count"] > 0
    assert metrics["test_accuracy"] is not None
    assert metrics["used_fraction"] == pytest.approx(64 / 256)  # the final k of 256 pixels
    # the schedule rule moved k from k_init (128 of 256 pixels) down to half of it at the epoch ends;
    # each row's k is the one its validation ran at, set at the epoch's end
    history = json.loads((tmp_path / "history.json").read_text())
    ks = [row["k"] for row in history]
    assert ks == [96, 64, 64] and metrics["k_final"] == 64
    assert all(row["k_trace"] == [] for row in history)  # the schedule decides nothing from the loss
    looked = np.load(tmp_path / "looked_at.npz")
    assert looked["images"].shape == (8, 3, 16, 16) and looked["used"].shape == (8, 16, 16)
    assert looked["images"].dtype == np.uint8 and looked["images"].max() == 255  # min-max per image and channel
    assert looked["used"].sum(axis=(1, 2)).tolist() == [64.0] * 8  # the final k
    assert list(looked["class_names"]) == ["a", "b", "c", "d"] and looked["preds"].shape == (8,)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["in_channels"] == 3 and meta["num_classes"] == 4 and meta["image_size"] == 16
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["class_names"] == ["a", "b", "c", "d"]
    assert json.loads((tmp_path / "config.json").read_text())["strategy"] == "probe_net"


def test_same_seed_same_numbers(tmp_path) -> None:
    data = tiny_data()
    runs = [
        run_trial(probe_config(), data=data, trial_dir=tmp_path / str(i), objectives=["accuracy", "flops"],
                  augment=False, seed=7)
        for i in range(2)
    ]
    for key in ("accuracy", "test_accuracy", "flops", "k_final"):
        assert runs[0][key] == runs[1][key]
    a, b = (torch.load(tmp_path / str(i) / "model.pt") for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    histories = [json.loads((tmp_path / str(i) / "history.json").read_text()) for i in range(2)]
    assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]


@pytest.mark.parametrize("behaviour", ["nan"])
def test_nan_loss_raises_a_clear_error(tmp_path, behaviour: str) -> None:
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1"):
        run_trial(probe_config(behaviour=behaviour), data=tiny_data(), trial_dir=tmp_path,
                  objectives=["accuracy", "flops"], augment=False)
    assert not (tmp_path / "metrics.json").exists()


def test_infeasible_config_is_measured_not_trained(tmp_path) -> None:
    metrics = record_infeasible(probe_config(), shape=(3, 16, 16), num_classes=4, trial_dir=tmp_path,
                                objectives=["accuracy", "flops"], constraints={"flops": 1.0})
    assert metrics["accuracy"] == 0.0 and metrics["flops"] > 0 and metrics["feasible"] is False
    assert not (tmp_path / "model.pt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["constraints"] == {"flops": 1.0}


def test_dense_model_has_no_k_rule(tmp_path) -> None:
    config = {**default_config("dense_cnn"), "width": 4, "stages": 2, "epochs": 1, "batch_size": 32, "lr": 1e-3,
              "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0}
    metrics = run_trial(config, data=tiny_data(32), trial_dir=tmp_path, objectives=["accuracy", "flops"],
                        augment=False)
    assert metrics["k_final"] is None and metrics["flops"] > 0


def test_augmented_training_runs(tmp_path) -> None:
    metrics = run_trial(probe_config(epochs=1), data=tiny_data(32), trial_dir=tmp_path,
                        objectives=["accuracy", "flops"], augment=True)
    assert math.isfinite(metrics["accuracy"])


def test_infeasible_costs_are_recorded_on_the_batch_the_budget_was_checked_on(tmp_path) -> None:
    # span_pyramid with top_p keeps patches by content: its FLOPs depend on the images, so a config
    # rejected as over budget must not be recorded with FLOPs measured on other images (under it).
    from runner.engine.sampler import check_costs
    from search_space.spec import load_space

    space_file = tmp_path / "tp.yaml"
    space_file.write_text(
        "name: tp\ndata: {source: synthetic, image_size: 16, train: 16, val: 8, test: 8}\n"
        "objectives: {accuracy: maximize, flops: minimize}\nconstraints: {max_flops: 100000}\n"
        "training: {epochs: 1}\nspace:\n  strategy:\n    span_pyramid: {k_rule: top_p}\n",
        encoding="utf-8",
    )
    space = load_space(space_file)
    config = {**default_config("span_pyramid"), "k_rule": "top_p", "epochs": 1, "batch_size": 8, "lr": 1e-3,
              "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0}
    over = check_costs(config, space)["flops"]
    assert over > 0
    metrics = record_infeasible(config, shape=(3, 16, 16), num_classes=5, trial_dir=tmp_path / "0",
                                objectives=["accuracy", "flops"], constraints={"flops": over})
    assert metrics["flops"] == pytest.approx(100000 + over)
    assert metrics["flops"] > 100000


def test_k_rule_follows_the_classification_loss_not_the_auxiliary_terms(tmp_path, monkeypatch) -> None:
    """TNet's REINFORCE term can be negative; the k rule must see the cross-entropy alone."""
    import runner.engine.trial as trial_module

    seen: list[float] = []
    real = trial_module.make_k_rule

    def spy(*args, **kwargs):
        rule = real(*args, **kwargs)
        update = rule.update

        def recording_update(step: int, loss: float, probe=None) -> int:
            seen.append(loss)
            return update(step, loss, probe)

        rule.update = recording_update
        return rule

    monkeypatch.setattr(trial_module, "make_k_rule", spy)
    config = {**default_config("tnet_traversal"), "k_rule": "fixed", "reinforce_weight": 1.0, "epochs": 2,
              "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0}
    run_trial(config, data=tiny_data(32), trial_dir=tmp_path, objectives=["accuracy", "flops"], augment=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert seen == pytest.approx([row["class_loss"] for row in history])  # one 32-image batch per epoch
    assert any(row["class_loss"] != row["train_loss"] for row in history)


def test_latency_budget_is_checked_like_the_objective_is_measured(tmp_path, monkeypatch) -> None:
    """Same batch size as a trained trial's latency objective, on the trial's threads, driver threads restored."""
    import objectives.registry
    from runner.engine.sampler import check_costs
    from runner.engine.trial import MEASURE_BATCH
    from search_space.spec import load_space

    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "objectives: {accuracy: maximize, flops: minimize}\n"
        "data: {source: synthetic, image_size: 16}\n"
        "constraints: {max_latency_ms: 1000.0}\n"
        "search: {resources: {cpu: 1}}\n"
        "space: {strategy: {dense_cnn: {}}}\n"
    )
    seen = {}

    def fake_latency(model, images, **kwargs):
        seen["batch"], seen["threads"] = images.shape[0], torch.get_num_threads()
        return 1.0

    monkeypatch.setattr(objectives.registry, "measure_latency_ms", fake_latency)  # what the objective measures with
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = check_costs({**default_config("dense_cnn")}, load_space(space_file))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert found == {"latency_ms": 1.0 - 1000.0}
    assert seen == {"batch": MEASURE_BATCH, "threads": 1}


def test_weight_decay_reaches_only_weight_matrices_and_conv_kernels():
    """Norms, biases, CLS/position tokens and relative-position tables are not decayed."""
    from runner.engine.trial import param_groups
    from search_space.build import build_model, default_config

    for name in ("dense_vit", "sparse_topk", "span_pyramid", "dense_cnn"):
        model = build_model(default_config(name), 3, 4, 32)
        decayed, plain = param_groups(model, 0.05)
        assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
        names = {id(p): n for n, p in model.named_parameters()}
        decayed_names = {names[id(p)] for p in decayed["params"]}
        plain_names = {names[id(p)] for p in plain["params"]}
        assert decayed_names and all(n.endswith("weight") for n in decayed_names), name
        assert not any("norm" in n or n.endswith("bias") for n in decayed_names), name
        assert not any(t in n for n in decayed_names for t in ("cls_token", "pos_embed", "global_init", "rel_bias")), name
        assert len(decayed_names) + len(plain_names) == len(names), name


def sparse_config(**overrides: object) -> dict:
    return {**default_config("sparse_topk"), "coarse_channels": 4, "coarse_layers": 1, "embed_dim": 16, "num_heads": 2,
            "depth": 1, "epochs": 4, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "warmup_epochs": 0.0,
            "label_smoothing": 0.0, **overrides}


def test_loss_trend_decides_within_epochs_and_the_history_keeps_its_trace(tmp_path) -> None:
    """4 steps per epoch, 2 decisions per epoch, a tolerance no probe reaches: k shrinks at sub-epoch
    decision points from the end of epoch 1, each recorded with its step, k and smoothed loss."""
    config = sparse_config(k_rule="loss_trend", k_fraction=0.05, k_decisions=2, k_tolerance=0.5, k_freeze_fraction=0.25,
                           k_step=0.2)
    metrics = run_trial(config, data=tiny_data(), trial_dir=tmp_path, objectives=["accuracy", "flops"], augment=False)
    history = json.loads((tmp_path / "history.json").read_text())
    traces = [row["k_trace"] for row in history]
    assert [[point["step"] for point in trace] for trace in traces] == [[3], [5, 7], [9, 11], []]  # epoch 4 frozen
    points = [point for trace in traces for point in trace]
    assert all(math.isfinite(point["loss"]) for point in points)
    assert [point["k"] for point in points] == [10, 8, 6, 4, 4]  # 13 * 0.8 ... down to the model's floor (4)
    assert history[0]["k"] == 10 and metrics["k_final"] == history[-1]["k"] == 4
    assert "k_std" not in metrics  # one k for every image


def test_probe_losses_score_the_same_batch_at_two_k_and_restore_the_model() -> None:
    from runner.engine.trial import probe_losses
    from search_space.build import build_model

    torch.manual_seed(0)
    model = build_model(sparse_config(k_fraction=0.25), 3, 4, 16)
    x, y = tiny_data().train_x[:8], tiny_data().train_y[:8]
    at_k, at_probe = probe_losses(model, x, y, k=64, probe=(64, 16))
    assert model.training and model.k == 64
    model.eval()
    with torch.no_grad():
        assert at_k == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item())
        model.set_k(16)
        assert at_probe == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item())
    assert at_k != at_probe


def test_per_image_rule_reports_the_spread_of_its_counts(tmp_path) -> None:
    config = sparse_config(k_rule="top_p", k_top_p=0.6, k_fraction=0.5, epochs=2)
    metrics = run_trial(config, data=tiny_data(), trial_dir=tmp_path, objectives=["accuracy", "flops"], augment=False)
    assert metrics["k_min"] <= metrics["k_final"] <= metrics["k_max"] <= 128
    assert metrics["k_std"] >= 0.0
    assert (metrics["k_std"] > 0) == (metrics["k_min"] < metrics["k_max"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert all({"k_std", "k_min", "k_max"} <= set(row) for row in history)


@pytest.mark.parametrize(("config", "timed"), [
    (probe_config(k_rule="fixed", epochs=2), 1),
    ({**sparse_config(k_rule="ratio", epochs=2), **k_rule_defaults("ratio")}, 1),  # per-image counts vary, the cap not
    (probe_config(k_rule="schedule", epochs=2), 2),  # k moved: new shapes, timed again at the final k
    ({**default_config("dense_cnn"), "width": 4, "stages": 2, "epochs": 2, "batch_size": 32, "lr": 1e-3,
      "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0}, 1),
])
def test_throughput_is_timed_as_deployed_before_training_and_again_only_where_k_moved(tmp_path, monkeypatch, config,
                                                                                        timed) -> None:
    # a runtime's speed depends on the graph and its shapes, not on the weights: every trial is timed on
    # its deploy runtime before training (the per-epoch figures are the same kind for every trial, as
    # early stopping compares them), and again at the end only where training moved k
    from objectives import throughput

    calls: list[int] = []
    real = throughput.measure_throughput
    monkeypatch.setattr(throughput, "measure_throughput", lambda *a, **k: calls.append(1) or real(*a, **k))
    reports: list[dict] = []
    metrics = run_trial(config, data=tiny_data(32), trial_dir=tmp_path, objectives=["accuracy", "throughput"],
                        augment=False, report=reports.append)
    assert len(calls) == timed and metrics["throughput"] > 0 and metrics["throughput_spread"] >= 0
    assert len(reports) == 2 and reports[0]["throughput"] == reports[1]["throughput"] > 0
    if timed == 1:  # the figure every epoch reported is the trial's
        assert metrics["throughput"] == reports[-1]["throughput"]
