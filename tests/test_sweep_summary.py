"""The sweep summary: points, repeats (seeds, folds) and the tested metric."""

import pytest

from src.utils.hydra_callbacks import summarise


def job(n, overrides, **metrics):
    return {"job": str(n), "overrides": overrides, "metrics": metrics}


def test_an_lr_sweep_reports_each_point_and_the_best_not_a_mean_across_points():
    jobs = [
        job(0, ["model.optimizer.lr=1e-4"], **{"val/acc": 0.5, "test/acc": 0.4}),
        job(1, ["model.optimizer.lr=1e-3"], **{"val/acc": 0.7, "test/acc": 0.6}),
    ]
    summary = summarise(jobs, "val/acc")
    assert summary["metric"] == "test/acc"  # every job tested: the test metric is the one to report
    assert [(p["overrides"], p["mean"], p["n"]) for p in summary["points"]] == [
        (["model.optimizer.lr=1e-4"], 0.4, 1),
        (["model.optimizer.lr=1e-3"], 0.6, 1),
    ]
    assert summary["best"]["overrides"] == ["model.optimizer.lr=1e-3"] and "mean" not in summary


def test_seeds_and_folds_are_repeats_of_a_point_and_their_mean_is_reported():
    jobs = [
        job(k, [f"model.optimizer.lr={lr}", f"seed={seed}"], **{"val/acc": acc})
        for k, (lr, seed, acc) in enumerate([(1, 1, 0.5), (1, 2, 0.7), (2, 1, 0.8), (2, 2, 0.8)])
    ]
    summary = summarise(jobs, "val/acc")
    assert summary["metric"] == "val/acc"  # no job tested
    first, second = summary["points"]
    assert (first["n"], first["mean"], first["std"], first["repeats"]) == (
        2,
        pytest.approx(0.6),
        pytest.approx(0.1),
        "seeds",
    )
    assert summary["best"]["overrides"] == ["model.optimizer.lr=2"]
    folds = summarise([job(k, [f"data.fold={k}"], **{"test/acc": a}) for k, a in enumerate([0.5, 0.7])], "test/acc")
    assert (folds["mean"], folds["n"], folds["points"][0]["repeats"]) == (pytest.approx(0.6), 2, "data.folds")


def test_a_job_stopped_before_its_end_is_failed_with_its_resume_command(tmp_path, capsys):
    """A job whose metrics.json says finished: false (a signal, scancel) is not a result: listed as
    failed with the command that resumes it, and the sweep exits 1."""
    import json

    from omegaconf import OmegaConf

    from src.utils.hydra_callbacks import SweepSummary

    for n, finished in ((0, True), (1, False)):
        folder = tmp_path / str(n)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={n}\n")
        metrics = {"val/acc": 0.5, "finished": finished, "global_step": 7, "phases": {"fit": "stopped"}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "val/acc"})
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(config)
    assert ended.value.code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == ["1"] and summary["n"] == 1
    error = summary["jobs"][1]["error"]
    assert error.startswith("stopped at step 7 before its end")
    assert f"python -m src.train seed=1 ckpt_path=last hydra.run.dir={tmp_path / '1'}" in error


def test_an_auto_metric_is_what_the_jobs_resolved_for_their_data_and_a_loss_is_best_lowest(tmp_path, capsys):
    """optimized_metric=auto in the launching process: the summary reads the metric each job
    recorded (val/mAP for multi-label data) and reports its test twin; for a loss the best point
    is the lowest."""
    import json

    from omegaconf import OmegaConf

    from src.utils.hydra_callbacks import SweepSummary

    for n, score in ((0, 0.3), (1, 0.6)):
        folder = tmp_path / str(n)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model.optimizer.lr={n + 1}e-4\n")
        metrics = {"val/mAP": score, "test/mAP": score - 0.1, "finished": True, "optimized_metric": "val/mAP"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "auto"})
    SweepSummary().on_multirun_end(config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metric"] == "test/mAP" and summary["best"]["overrides"] == ["model.optimizer.lr=2e-4"]
    losses = [job(0, ["a=1"], **{"val/loss": 0.9}), job(1, ["a=2"], **{"val/loss": 0.4})]
    assert summarise(losses, "val/loss")["best"]["overrides"] == ["a=2"]
