"""Compose the project's Hydra configs in-process, shrunk for CPU tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
# a small CPU run on the command line: the tiny encoder shrunk further, the loader in-process
SMALL_RUN = [
    "++encoder.size=null",
    "++encoder.embed_dim=32",
    "++encoder.depth=2",
    "data.num_workers=0",
    "data.batch_size=4",
]
TINY = ["++encoder.size=null", "++encoder.embed_dim=32", "++encoder.depth=2", "++encoder.drop_path_rate=0.0"]


def compose_run(config_name: str, overrides: list[str], data_root: Path, out: Path):
    """The config a command line with these overrides runs, its data and output in the test's folders."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a run: Hydra's own settings are HydraConfig's, not the task's
        cfg.paths.root_dir = str(Path(CONFIGS).parent)
        cfg.paths.data_dir = str(data_root)
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out)
    return cfg


def compose_cfg(config_name: str, overrides: list[str], data_root: Path, out: Path):
    """compose_run's config shrunk for a CPU test: the tiny encoder narrower, one process, no logger."""
    cfg = compose_run(config_name, overrides + TINY, data_root, out)
    with open_dict(cfg):
        cfg.extras.print_config = False
        cfg.extras.enforce_tags = False
        cfg.logger = None
        cfg.data.num_workers = 0
        cfg.data.pin_memory = False
        cfg.data.batch_size = 2
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.precision = "32-true"
        cfg.trainer.pop("strategy", None)
        cfg.trainer.enable_model_summary = False
    return cfg
