import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import open_dict

from src.train import train
from src.utils.errors import UserError
from tests.helpers.hydra_cfg import TINY, compose_cfg, compose_run

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def test_a_task_is_one_experiment_file_on_the_shared_model_configs():
    """Every experiment is found, not counted (each runs below), and names its recipe inline on the
    two model configs: no per-task model file to keep beside it."""
    assert {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")} == {"finetune", "ssl"}
    for name in EXPERIMENTS:
        defaults = yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text())["defaults"]
        models = [e["override /model"] for e in defaults if isinstance(e, dict) and "override /model" in e]
        assert models in ([], ["finetune"], ["ssl"]), (name, models)  # [] : it extends another experiment
    assert {"pretrain", "pretrain_demo", "ks2_demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment(experiment, data_root, tmp_path):
    # the input shrunk with the encoder (a 30 s task's 3000 frames would take most of the run); the
    # pretraining recipes keep theirs, which their mask counts are set for
    short = [] if experiment.startswith("pretrain") else ["data.target_length=128"]
    cfg = compose_cfg("train.yaml", [f"experiment={experiment}", *short], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    metrics, objects = train(cfg)
    stage = "val" if experiment.startswith("pretrain") else "test"
    assert any(k.startswith(f"{stage}/") for k in metrics), metrics
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["device"], record["precision"]) == ("cpu", "32-true")  # what the run says it used


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_smoke_runs_every_experiment(experiment, data_root, tmp_path):
    """debug=smoke as a user runs it: the recipe's data, callbacks and logger on the CPU with a
    2-layer 32-wide encoder, 3 steps, then validation and (fine-tuning) test."""
    short = [] if experiment.startswith("pretrain") else ["data.target_length=128"]  # as above
    cfg = compose_run("train.yaml", [f"experiment={experiment}", "debug=smoke", *short], data_root, tmp_path)
    metrics, objects = train(cfg)
    trainer = objects["trainer"]  # 3 steps, or the epoch of the tests' miniature datasets when it is shorter
    assert 0 < trainer.global_step == trainer.num_training_batches <= 3
    assert objects["model"].encoder.config.embed_dim == 32
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and list((tmp_path / "tensorboard").rglob("events.*"))
    stage = "val" if experiment.startswith("pretrain") else "test"
    assert any(k.startswith(f"{stage}/") for k in metrics), metrics
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["device"], record["precision"], record["finished"]) == ("cpu", "32-true", True)


DEBUG_PRESETS = sorted(p.stem for p in (ROOT / "configs" / "debug").glob("*.yaml") if p.stem != "smoke")


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_every_debug_preset_runs_a_gpu_recipe_on_the_cpu_in_full_precision(preset, data_root, tmp_path):
    """The presets that drop the callbacks and loggers (callbacks: null) print their config and run;
    a GPU recipe's bf16 and DDP give way to one CPU process in fp32, without anomaly detection."""
    overrides = ["experiment=ks2", "trainer=ddp_bf16", f"debug={preset}", "data.target_length=128", "data.batch_size=2"]
    overrides += TINY + (["trainer.max_epochs=2"] if preset == "overfit" else [])  # its 20 epochs: 36 s in CI
    cfg = compose_run("train.yaml", overrides, data_root, tmp_path)
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step > 0 and any(k.startswith("test/") for k in metrics), metrics
    assert (str(trainer.precision), trainer.world_size) == ("32-true", 1) and not trainer._detect_anomaly
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["device"], record["precision"]) == ("cpu", "32-true")


def test_cuda_graph_is_a_cuda_setting_and_the_cpu_step_runs_eagerly(data_root, tmp_path):
    """model.cuda_graph on a machine without CUDA: the same eager step (tests/test_gpu_graph.py checks
    the graphed one against it on a GPU)."""
    losses = []
    for graph in (False, True, "auto"):
        cfg = compose_cfg("train.yaml", ["experiment=pretrain_demo", f"model.cuda_graph={graph}"], data_root, tmp_path)
        with open_dict(cfg):
            cfg.trainer.fast_dev_run = True
        metrics, _ = train(cfg)
        losses.append(float(metrics["train/loss_step"]))
    assert losses[0] == losses[1] == losses[2]


def test_cuda_graph_auto_is_on_for_one_process_without_accumulation_and_true_refuses_accumulation():
    from types import SimpleNamespace

    from src.models.ssl_module import SSLModule
    from src.utils.errors import UserError

    encoder = dict(backbone="ssamba", size="tiny", depth=2, target_length=64)
    module = SSLModule(encoder, mask_patches=8, val_mask_patches=8)
    cases = {(1, 1): True, (2, 1): False, (1, 2): False}  # (accumulate, processes) -> graphed under auto
    for (accumulate, world), graphed in cases.items():
        module._trainer = SimpleNamespace(accumulate_grad_batches=accumulate, world_size=world)
        assert module._graph_wanted() is graphed, (accumulate, world)
    module.hparams.cuda_graph = True
    module._trainer = SimpleNamespace(accumulate_grad_batches=1, world_size=2)
    assert module._graph_wanted()  # DDP: on when asked for
    module._trainer = SimpleNamespace(accumulate_grad_batches=4, world_size=1)
    with pytest.raises(UserError, match="accumulate_grad_batches=1 \\(it is 4\\)"):
        module._graph_wanted()
    with pytest.raises(UserError, match="model.cuda_graph='yes'"):
        SSLModule(encoder, mask_patches=8, val_mask_patches=8, cuda_graph="yes")


def test_the_demo_experiments_take_cuda_when_there_is_one():
    """make pretrain / make finetune: the default trainer asks Lightning for the best accelerator."""
    for experiment in ("pretrain_demo", "ks2_demo"):
        trainer = yaml.safe_load((ROOT / "configs" / "experiment" / f"{experiment}.yaml").read_text())["defaults"]
        assert {"override /trainer": "default"} in trainer
    assert yaml.safe_load((ROOT / "configs" / "trainer" / "default.yaml").read_text())["accelerator"] == "auto"


@pytest.mark.parametrize("experiment", ["ks2_demo", "pretrain_demo"])
def test_ssast_backbone_in_experiments(experiment, data_root, tmp_path):
    cfg = compose_cfg(
        "train.yaml", [f"experiment={experiment}", "encoder=ssast", "++encoder.num_heads=2"], data_root, tmp_path
    )
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    _, objects = train(cfg)
    assert type(objects["model"].encoder).__name__ == "SSASTEncoder"


@pytest.mark.parametrize("experiment", ["pretrain_demo", "ks2_demo"])
def test_ddp_simulation_two_ranks(experiment, data_root, tmp_path):
    cfg = compose_cfg("train.yaml", [f"experiment={experiment}", "trainer=ddp_sim"], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.devices = 2
        cfg.trainer.strategy = "ddp_spawn"
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = 2
        cfg.trainer.limit_val_batches = 1
        cfg.trainer.limit_test_batches = 1
        cfg.trainer.num_sanity_val_steps = 0
        cfg.data.batch_size = 4
    metrics, _ = train(cfg)
    assert "val/acc" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def _pretrain_four_steps(overrides: list[str], data_root, tmp_path) -> None:
    """pretrain_demo for four training steps, no validation, with overrides."""
    cfg = compose_cfg("train.yaml", ["experiment=pretrain_demo", *overrides], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.max_steps = 4
        cfg.trainer.limit_val_batches = 0
    train(cfg)


def test_throughput_callback_times_the_steps_after_warm_up(data_root, tmp_path):
    _pretrain_four_steps(["callbacks=throughput", "callbacks.throughput.warmup_steps=1"], data_root, tmp_path)
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert result["steps_timed"] == 3 and result["devices"] == 1 and result["card"] == "cpu"
    assert result["samples_per_s"] == pytest.approx(2 * 1000 / result["ms_per_step"])


def test_throughput_stops_its_clock_when_the_last_step_ends(tmp_path):
    # what runs once training ends (last.ckpt's save, other callbacks' on_train_end) is no step's time
    from types import SimpleNamespace

    from src.utils.callbacks import Throughput

    clock = Throughput(warmup_steps=1, out=str(tmp_path / "throughput.json"))
    logged = []
    trainer = SimpleNamespace(global_step=0, world_size=1, precision="32-true", is_global_zero=True, loggers=[
        SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))
    ])  # fmt: skip
    module, batch = SimpleNamespace(device=torch.device("cpu")), {"fbank": torch.zeros(4, 1)}
    for step in range(4):
        trainer.global_step = step
        clock.on_train_batch_start(trainer, module, batch, step)
        time.sleep(0.02)  # the step
        clock.on_train_batch_end(trainer, module, None, batch, step)
    time.sleep(0.5)  # after the last step: a checkpoint written as training ends
    clock.on_train_end(trainer, module)
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert result["steps_timed"] == 3 and 20 <= result["ms_per_step"] < 120
    assert result["samples_per_s"] == pytest.approx(4 * 1000 / result["ms_per_step"])
    assert logged == [({"perf/samples_per_s": result["samples_per_s"], "perf/ms_per_step": result["ms_per_step"]}, 3)]


def test_step_profile_profiles_the_steps_it_is_given_and_writes_its_table(data_root, tmp_path):
    """callbacks=profile through src/train.py: steps 1-2 of 4 profiled (on the CPU: host events
    only, no kernel rows), the steps' wall time and the table written beside it."""
    profile = ["callbacks=profile", "callbacks.step_profile.start_step=1", "callbacks.step_profile.steps=2"]
    _pretrain_four_steps(profile, data_root, tmp_path)
    result = json.loads((tmp_path / "step_profile.json").read_text())
    assert result["steps"] == 2 and result["from_step"] == 1 and result["card"] == "cpu"
    assert result["wall_ms"] > 0 and result["busy_ms"] == 0 and result["kernels"] == []
    assert sum(result["idle"]["gaps_us"].values()) == 0 and result["idle"]["long_gaps_by_host_op"] == []
    assert "steps 1-2: wall" in (tmp_path / "step_profile.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_profile_on_cuda_lists_the_steps_kernels_and_copies(tmp_path):
    from types import SimpleNamespace

    from src.utils.callbacks import StepProfile

    profile = StepProfile(start_step=1, steps=2, out=str(tmp_path / "step_profile.json"))
    trainer = SimpleNamespace(global_step=0, is_global_zero=True)
    module = SimpleNamespace(device=torch.device("cuda"))
    x = torch.randn(1024, 1024, device="cuda")
    for step in range(4):
        trainer.global_step = step
        profile.on_train_batch_start(trainer, module, None, step)
        (x @ x).sum().item()  # a kernel, a reduction and a copy back a step
        profile.on_train_batch_end(trainer, module, None, None, step)
    result = json.loads((tmp_path / "step_profile.json").read_text())
    assert result["steps"] == 2 and result["launches"] >= 3
    assert any("Memcpy DtoH" in k["kernel"] for k in result["kernels"])
    assert 0 < result["busy_ms"] <= result["device_ms"] + 1e-6 and result["busy_ms"] < result["wall_ms"]
    # the host's .item() and Python between the steps leave the GPU idle: the gaps are counted
    assert sum(result["idle"]["gaps_us"].values()) > 0


def test_the_gpus_busy_time_counts_overlapping_work_once():
    from src.utils.profiling import busy_us

    # a copy beside a kernel (overlapping), a kernel inside another, then a gap and one more
    assert busy_us([(0, 10), (5, 12), (6, 8), (20, 25)]) == 17
    assert busy_us([(20, 25), (0, 10)]) == 15 and busy_us([]) == 0


def test_the_gpus_idle_time_is_split_by_gap_length_and_long_gaps_name_the_host_op():
    from src.utils.profiling import host_during_long_gaps, idle_gaps

    # over two steps: kernels back to back but for gaps of 4 us, 50 us and 300 us (overlaps merged)
    kernels = [(0, 10), (5, 12), (16, 20), (70, 80), (380, 390)]
    assert idle_gaps(kernels, steps=2) == {"under 10 us": 2.0, "10-100 us": 25.0, "100 us and over": 150.0}
    assert idle_gaps([], steps=1) == {"under 10 us": 0.0, "10-100 us": 0.0, "100 us and over": 0.0}
    # the innermost host op at each long gap's middle; an op that ended before is passed over
    host = [("step", 0, 1000), ("optimizer", 60, 400), ("metrics", 200, 260), ("early", 0, 50)]
    gaps = [(80, 380), (500, 700), (1200, 1300)]
    assert host_during_long_gaps(gaps, host, steps=2) == [
        {"op": "metrics", "us": 150.0},  # middle 230: inside step, optimizer and metrics, the shortest
        {"op": "step", "us": 100.0},
        {"op": "(no op)", "us": 50.0},
    ]


def test_pretrain_then_finetune_hand_over(data_root, tmp_path):
    cfg = compose_cfg("train.yaml", ["experiment=pretrain_demo"], data_root, tmp_path / "pre")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = 2
        cfg.trainer.limit_val_batches = 1
    train(cfg)
    export = tmp_path / "pre" / "encoder"
    assert (export / "encoder.safetensors").exists() and (export / "config.json").exists()
    for pretrained in (export, tmp_path / "pre" / "checkpoints" / "last.ckpt"):
        cfg = compose_cfg(
            "train.yaml", ["experiment=ks2_demo", f"model.pretrained={pretrained}"], data_root, tmp_path / "ft"
        )
        with open_dict(cfg):
            cfg.trainer.fast_dev_run = True
        _, objects = train(cfg)
        assert objects["model"].encoder.embed_dim == 32


def run_cli(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_real_recipe_without_data_says_how_to_get_it(tmp_path):
    # the CPU trainer: without a GPU, the GPU recipe's trainer is the first thing named
    cpu = [] if torch.cuda.is_available() else ["trainer=cpu"]
    result = run_cli("experiment=ks2", *cpu, f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "Speech Commands v0.02 is not prepared" in result.stderr
    assert "python -m src.data.prepare speechcommands" in result.stderr
    assert "Traceback" not in result.stderr
    assert "config:" not in result.stdout + result.stderr  # the config is printed only once the checks pass
    assert not (tmp_path / "run").exists()  # a run that stopped on its checks leaves no run folder


def test_resuming_with_ckpt_path_last_in_a_new_folder_names_the_runs_to_resume(data_root, tmp_path):
    stopped = tmp_path / "logs" / "train" / "runs" / "2026-11-26_10-00-00"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"a run that stopped")
    result = run_cli(
        "ckpt_path=last",
        f"paths.data_dir={data_root}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'new'}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"ckpt_path=last found no {tmp_path / 'new' / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert f"hydra.run.dir={stopped}" in result.stderr
    assert not (tmp_path / "new").exists()


def test_eval_without_a_checkpoint_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "src.eval", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "eval.py needs ckpt_path=<.ckpt> and the experiment=" in result.stderr


def test_unknown_experiment_names_the_available_ones(tmp_path):
    result = run_cli("experiment=ks3", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Could not find 'experiment/ks3'" in result.stderr


def test_eval_reproduces_the_test_metric_of_a_checkpoint(data_root, tmp_path):
    from src.eval import evaluate

    cfg = compose_cfg("train.yaml", ["experiment=ks2_demo"], data_root, tmp_path / "train")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
    metrics, objects = train(cfg)
    best = objects["trainer"].checkpoint_callback.best_model_path
    cfg = compose_cfg("eval.yaml", ["experiment=ks2_demo", f"ckpt_path={best}"], data_root, tmp_path / "eval")
    eval_metrics, _ = evaluate(cfg)
    assert eval_metrics["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    # evaluated as another model (here: another state size; eval.py without the run's experiment=
    # builds the default one): one UserError naming the fix, not a page of size mismatches
    cfg = compose_cfg(
        "eval.yaml", ["experiment=ks2_demo", f"ckpt_path={best}", "++encoder.d_state=8"], data_root, tmp_path / "eval2"
    )
    with pytest.raises(UserError, match="does not fit the model: .*pass the experiment=... and overrides"):
        evaluate(cfg)


def test_the_pretraining_export_carries_its_data_normalisation_and_length_to_the_embeddings(data_root, tmp_path):
    """From the data config to embed.py: the export that pretraining writes (and src/export.py writes
    from its checkpoint) records the data's mean, std and target_length, and the front ends use them."""
    from src.embedding import hear
    from src.export import export

    overrides = ["experiment=pretrain_demo", "data.mean=-3.25", "data.std=2.5", "data.target_length=96"]
    cfg = compose_cfg("train.yaml", overrides, data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.max_steps = 1
        cfg.trainer.limit_val_batches = 1
    train(cfg)
    model = hear.load_model(str(tmp_path / "encoder"))
    assert (model.mean, model.std, model.grid.window_frames) == (-3.25, 2.5, 96)
    assert model.encoder.config.target_length == 96
    again = export(str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "again"))
    data = json.loads((again / "config.json").read_text())["data"]
    assert (data["mean"], data["std"]) == (-3.25, 2.5)
    assert len(data["fingerprint"]) == 16  # and which training data it was (the stores' indexes)


def test_the_monitored_metric_follows_the_data_and_one_never_logged_is_refused_before_training(data_root, tmp_path):
    """optimized_metric=auto (the default): val/mAP on AudioSet's multi-label data, val/acc on
    keywords; the checkpoint callback monitors it. A metric validation does not log: one line
    before the first step, not a ModelCheckpoint error after the first epoch."""
    for experiment, expected in (("as20k", "val/mAP"), ("ks2_demo", "val/acc")):
        cfg = compose_run(
            "train.yaml",
            [f"experiment={experiment}", "debug=smoke", "data.target_length=128"],
            data_root,
            tmp_path / experiment,
        )
        metrics, objects = train(cfg)
        assert cfg.optimized_metric == expected and expected in metrics
        assert objects["trainer"].checkpoint_callback.monitor == expected
        assert json.loads((tmp_path / experiment / "metrics.json").read_text())["optimized_metric"] == expected
    cfg = compose_run(
        "train.yaml", ["experiment=as20k", "debug=smoke", "optimized_metric=val/acc"], data_root, tmp_path / "wrong"
    )
    with pytest.raises(
        UserError, match=r"optimized_metric=val/acc: validation here logs val/mAP.*optimized_metric=auto"
    ):
        train(cfg)
    assert not (tmp_path / "wrong" / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["trainer.devices=1"], "auto"),  # DDP's wrapper over one process only adds work
        (["trainer.devices=[0]"], "auto"),
        (["trainer.devices=2"], "ddp"),
        (["trainer.devices=1", "trainer.num_nodes=2"], "ddp"),
        (["trainer=ddp_sim", "trainer.devices=1"], "ddp_spawn"),  # the CPU simulation keeps its launcher
    ],
)
def test_ddp_on_one_device_is_the_single_device_strategy(overrides, expected, tmp_path):
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from src.utils import entry

    cfg = compose_run("train", ["experiment=pretrain", *overrides], tmp_path, tmp_path)
    chosen = entry.trainer_strategy(cfg)
    assert chosen == expected
    if expected == "auto":  # what Lightning builds from it on this machine's CPU
        trainer = L.Trainer(accelerator="cpu", devices=1, strategy=chosen, logger=False)
        assert isinstance(trainer.strategy, SingleDeviceStrategy) and not isinstance(trainer.strategy, DDPStrategy)


def test_a_ddp_recipe_on_one_device_trains_without_ddps_wrapper(data_root, tmp_path):
    """src/train.py passes trainer_strategy's choice on: the pretraining recipe's ddp on one device
    trains with Lightning's single-device strategy, its module not wrapped in DistributedDataParallel."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    cfg = compose_cfg("train.yaml", ["experiment=pretrain_demo"], data_root, tmp_path)
    with open_dict(cfg):
        cfg.trainer.strategy = "ddp"  # as trainer=ddp_bf16 sets it
        cfg.trainer.fast_dev_run = True
    _, objects = train(cfg)
    strategy = objects["trainer"].strategy
    assert isinstance(strategy, SingleDeviceStrategy)
    assert not isinstance(strategy.model, torch.nn.parallel.DistributedDataParallel)
