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
