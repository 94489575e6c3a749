"""Export a checkpoint's encoder:  python src/export.py ckpt_path=<.ckpt> [out_dir=DIR]

The checkpoint is read with torch.load(weights_only=True); the export is encoder.safetensors plus
config.json (encoder arguments and the normalisation), which src.models.export.from_pretrained and
the embedding API (src/hear.py) read without Lightning or Hydra."""

from __future__ import annotations

from pathlib import Path

import rootutils

rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.models.components import build_encoder  # noqa: E402
from src.models.export import encoder_from_checkpoint, load_strict, save_encoder  # noqa: E402
from src.utils.utils import user_errors_exit  # noqa: E402


def export(ckpt_path: str, out_dir: str | None, mean: float, std: float, target_length: int) -> Path:
    config, state = encoder_from_checkpoint(ckpt_path)
    config.pop("mask_token", None)
    encoder = build_encoder(**config, mask_token="mask_embed" in state)
    load_strict(encoder, state, ckpt_path)
    out = Path(out_dir) if out_dir else Path(ckpt_path).resolve().parent.parent / "encoder_export"
    data = {"mean": mean, "std": std, "target_length": target_length}
    save_encoder(encoder, out, extra={"data": data, "exported_from": str(ckpt_path)})
    return out


@hydra.main(version_base="1.3", config_path="../configs", config_name="export.yaml")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    out = export(cfg.ckpt_path, cfg.out_dir, cfg.mean, cfg.std, cfg.target_length)
    print(f"encoder exported to {out}")


if __name__ == "__main__":
    main()
