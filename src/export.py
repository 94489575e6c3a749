"""Export a checkpoint's encoder:  python -m src.export ckpt_path=<.ckpt> [out_dir=DIR]

Writes the folder pretraining also writes at its end (<run>/encoder): encoder.safetensors plus
config.json, which holds the encoder's config (its target_length and num_mel_bins included) and the
normalisation of the data it was trained on, as the checkpoint recorded it. The embedding API
(src/embedding/hear.py), python -m src.embedding, the s3prl upstream and src.models.pretrained.from_pretrained
read it without Lightning or Hydra. The checkpoint is read with torch.load(weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import hydra
import rootutils
from omegaconf import DictConfig

# PROJECT_ROOT (which configs/paths reads) and the project on the import path, before the project's
# imports: the file run by its path works from a plain checkout, not only after `pip install -e .`
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)

from src.models.pretrained import build_pretrained, read_pretrained, save_encoder
from src.utils.errors import UserError
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


@hydra.main(version_base="1.3", config_path="../configs", config_name="export.yaml")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    out = export(cfg.ckpt_path, cfg.out_dir, cfg.mean, cfg.std)
    print(f"encoder exported to {out}")


if __name__ == "__main__":
    main()
