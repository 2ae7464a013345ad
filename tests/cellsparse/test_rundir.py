"""The run directory's trials table: what the writer writes, the one parser reads back typed."""

from __future__ import annotations

import optuna

from cellsparse import rundir


def test_the_trials_table_reads_back_with_its_declared_types(tmp_path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=rundir.open_storage(tmp_path), directions=["maximize", "minimize"])
    config = {"strategy": "dense_cnn", "width": 8}
    done = {rundir.ATTR_CONFIG: config, rundir.ATTR_STRATEGY: "dense_cnn", rundir.ATTR_TEST_ACCURACY: 0.8,
            rundir.ATTR_K_FINAL: None, rundir.ATTR_PARAMS: 1000, rundir.ATTR_DURATION: 2.5}
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1e6], user_attrs=done, constraints={"max_flops": -1.0}))
    failed = {rundir.ATTR_CONFIG: {"strategy": "sparse_topk"}, rundir.ATTR_STRATEGY: "sparse_topk", rundir.ATTR_ERROR: "x"}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=failed))
    written = rundir.write_trials_csv(tmp_path, study, ["accuracy", "flops"])
    assert list(written.columns) == [*rundir.trials_columns(["accuracy", "flops"]), "config.strategy", "config.width"]

    trials = rundir.read_trials(tmp_path / rundir.TRIALS_FILE, ["accuracy", "flops"])
    kinds = {int: "i", bool: "b", float: "f", str: "O"}
    columns = {**rundir.HEAD_COLUMNS, "accuracy": float, "flops": float, **rundir.TAIL_COLUMNS}
    for column, kind in columns.items():
        if kind is str and trials[column].isna().all():
            continue  # an empty text column reads as NaN
        assert trials[column].dtype.kind == kinds[kind], column
    assert trials["sparse"].tolist() == [False, True] and trials["feasible"].tolist() == [True, True]
    assert trials["state"].tolist() == ["COMPLETE", "FAIL"] and trials["error"].tolist()[1] == "x"


def test_config_columns_keep_their_types_through_the_csv(tmp_path) -> None:
    """Integers stay integers (also where a strategy does not take the key), floats stay floats even
    when whole, true/false stay booleans: run.trials' config.width is not float64."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=rundir.open_storage(tmp_path), directions=["maximize", "minimize"])
    configs = [{"strategy": "dense_cnn", "width": 8, "lr": 0.002, "mlp_ratio": 2.0, "st_gating": True, "k_rule": "fixed"},
               {"strategy": "sparse_topk", "lr": 0.001, "mlp_ratio": 3.0, "st_gating": False}]
    for config in configs:
        attrs = {rundir.ATTR_CONFIG: config, rundir.ATTR_STRATEGY: config["strategy"], rundir.ATTR_PARAMS: 1234}
        study.add_trial(optuna.trial.create_trial(values=[0.9, 1e6], user_attrs=attrs))
    rundir.write_trials_csv(tmp_path, study, ["accuracy", "flops"])
    text = (tmp_path / rundir.TRIALS_FILE).read_text()
    assert ",8," in text and ",8.0," not in text and ",1234," in text
    trials = rundir.read_trials(tmp_path / rundir.TRIALS_FILE, ["accuracy", "flops"])
    assert str(trials["config.width"].dtype) == "Int64" and trials["config.width"].tolist()[0] == 8
    assert trials["config.width"].isna().tolist() == [False, True]
    assert trials["config.lr"].dtype == float and trials["config.mlp_ratio"].dtype == float
    assert trials["config.mlp_ratio"].tolist() == [2.0, 3.0]
    assert str(trials["config.st_gating"].dtype) == "boolean" and trials["config.st_gating"].tolist() == [True, False]
    assert trials["config.k_rule"].tolist()[0] == "fixed"
    assert str(trials["params_count"].dtype) == "Int64" and trials["params_count"].tolist() == [1234, 1234]
