"""The one parser of trials.csv: typed columns, and one rule for an empty ``feasible`` cell."""

from __future__ import annotations

from cellsparse.rundir import eligible_mask, read_trials


def test_booleans_and_the_empty_cell_are_read_one_way(tmp_path) -> None:
    path = tmp_path / "trials.csv"
    path.write_text("number,state,feasible,strategy,accuracy,flops\n"
                    "0,COMPLETE,true,dense_cnn,0.9,100\n"
                    "1,COMPLETE,False,dense_cnn,0.95,50\n"
                    "2,COMPLETE,,sparse_topk,0.8,10\n"
                    "3,complete,1,span_pyramid,0.7,5\n"
                    "4,FAIL,,sparse_topk,,\n")
    trials = read_trials(path)
    assert trials["feasible"].tolist() == [True, False, True, True, True]
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert trials["sparse"].tolist() == [False, False, True, True, True]  # from the registry: no column written
    assert eligible_mask(trials, ["accuracy", "flops"]).tolist() == [True, False, True, True, False]


def test_the_k_path_places_decisions_within_epochs() -> None:
    from reports.figures import k_path

    history = [{"epoch": 1, "steps": 4, "k": 80, "k_trace": [{"step": 1, "k": 90}, {"step": 3, "k": 80}]},
               {"epoch": 2, "steps": 8, "k": 70, "k_trace": [{"step": 5, "k": 70}]},
               {"epoch": 3, "k": 70}]  # an older history without steps: epoch ends only
    xs, ys = k_path(history)
    assert xs == [0.5, 1.0, 1.0, 1.5, 2.0, 3.0] and ys == [90, 80, 80, 70, 70, 70]
