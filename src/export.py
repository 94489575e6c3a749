"""Export a checkpoint's encoder:  python -m src.export ckpt_path=<.ckpt> [out_dir=DIR]
    [push_to_hub=org/name [dry_run=true] [license=mit] [private=false]]

Writes the folder pretraining also writes at its end (<run>/encoder): encoder.safetensors plus
config.json, which holds the encoder's config (its target_length and num_mel_bins included) and the
normalisation of the data it was trained on, as the checkpoint recorded it. The embedding API
(src/embedding/hear.py), python -m src.embedding, the s3prl upstream and src.models.pretrained.from_pretrained
read it without Lightning or Hydra. The checkpoint is read with torch.load(weights_only=True).

push_to_hub writes a model card (README.md, src/models/card.py) into the folder and uploads the
folder to that Hub repository (created if needed, with the token huggingface_hub finds); dry_run
writes the card and lists what would be sent, without a network."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import rootutils
from omegaconf import DictConfig

# PROJECT_ROOT (which configs/paths reads) and the project on the import path, before the project's
# imports: the file run by its path works from a plain checkout, not only after `pip install -e .`
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)

from src.models.card import model_card, run_record
from src.models.hub import is_repo_id
from src.models.pretrained import (
    build_pretrained,
    export_config,
    read_checkpoint,
    read_pretrained,
    safetensors_shapes,
    save_encoder,
)
from src.utils.errors import UserError
from src.utils.io import write_text
from src.utils.utils import user_errors_exit


def export(ckpt_path: str, out_dir: str | None = None, mean: float | None = None, std: float | None = None) -> Path:
    """mean, std: only for checkpoints that do not record their data's normalisation (written before
    checkpoints did); they may not contradict one that does."""
    config, state, data = read_pretrained(ckpt_path)
    given = {"mean": mean, "std": std}
    if data is None:
        if mean is None or std is None:
            raise UserError(
                f"{ckpt_path} does not record the normalisation of its training data (it predates that); "
                "pass mean=... std=... as in the data config it was trained with"
            )
        data = given
    elif any(v is not None and v != data[k] for k, v in given.items()):
        raise UserError(f"{ckpt_path} was trained with mean={data['mean']} std={data['std']}; drop mean= and std=")
    encoder = build_pretrained(config, state, str(ckpt_path), mask_token="mask_embed" in state)
    out = Path(out_dir) if out_dir else Path(ckpt_path).resolve().parent.parent / "encoder"
    return save_encoder(encoder, out, data=data, extra={"exported_from": str(ckpt_path)})


def publish(folder: Path, ckpt_path: str, repo_id: str, license: str, dry_run: bool, private: bool) -> list:
    """Write the model card into an export folder and upload the folder to repo_id (not with
    dry_run); returns [(file name, bytes)] of what is (or would be) sent."""
    if not is_repo_id(repo_id):
        raise UserError(f"push_to_hub={repo_id!r}: give a Hub repository id, org/name")
    meta, _ = export_config(folder)
    shapes = safetensors_shapes(folder / "encoder.safetensors")  # the header: no weights read
    parameters = sum(math.prod(shape) for name, shape in shapes.items() if name != "mask_embed")
    ckpt = read_checkpoint(ckpt_path, mmap=True) if not Path(ckpt_path).is_dir() else {}
    card = model_card(repo_id, meta, parameters, ckpt.get("global_step"), run_record(ckpt_path), license)
    write_text(folder / "README.md", card)
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"ssamba export of {ckpt_path}")
    return files


@hydra.main(version_base="1.3", config_path="../configs", config_name="export.yaml")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    out = export(cfg.ckpt_path, cfg.out_dir, cfg.mean, cfg.std)
    print(f"encoder exported to {out}")
    if cfg.push_to_hub:
        files = publish(out, cfg.ckpt_path, cfg.push_to_hub, cfg.license, cfg.dry_run, cfg.private)
        listing = ", ".join(f"{name} ({size:,} bytes)" for name, size in files)
        verb = "would upload (dry run)" if cfg.dry_run else "uploaded"
        print(f"{verb} to https://huggingface.co/{cfg.push_to_hub}: {listing}")


if __name__ == "__main__":
    main()
