"""Embeddings with the HEAR API (hearbenchmark.com/hear-api.html), without Lightning or Hydra.

    import src.hear as hear
    model = hear.load_model("exports/amba_tiny_400")          # an export folder (src/export.py)
    scene = hear.get_scene_embeddings(audio, model)            # audio: (n_sounds, n_samples), 16 kHz
    emb, ts = hear.get_timestamp_embeddings(audio, model)      # (n, T, D) and centres in ms

Audio is cut into windows of the pretraining length (1024 frames = 10.24 s by default) whose patch
columns tile time on one grid (src/windows.py), each window encoded, and every time column of
patches averaged over frequency: one embedding per patch stride (160 ms for 16x16 patches, 100 ms
with stride 10), stamped at the centre of its patch, for every column centred inside the audio. The
scene embedding is the mean of the timestamp embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from src.models.export import from_pretrained, read_export
from src.windows import grid_of

SAMPLE_RATE = 16000


class EmbeddingModel(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, mean: float, std: float, window_frames: int, batch_windows: int = 16):
        super().__init__()
        self.encoder = encoder.eval()
        self.mean, self.std, self.window_frames, self.batch_windows = mean, std, window_frames, batch_windows
        self.grid = grid_of(encoder, window_frames)
        self.scene_embedding_size = self.timestamp_embedding_size = encoder.embed_dim

    @torch.no_grad()
    def timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """One sound: (T, D) embeddings, one per patch column whose centre lies inside the audio, and
        (T,) those centres in ms, a regular hop of tstride frames."""
        n_columns = self.grid.columns_inside(audio.shape[-1])
        wins = self.grid.windows(audio, self.mean, self.std, n_columns)  # (n, 1, F, window)
        device = next(self.encoder.parameters()).device
        f_dim, _ = self.encoder.grid_for(wins.shape[2], self.window_frames)
        prefix = self.encoder.num_prefix_tokens
        tokens = torch.cat(
            [
                self.encoder(wins[i : i + self.batch_windows].to(device))[:, prefix:]
                for i in range(0, len(wins), self.batch_windows)
            ]
        )  # (n, f * columns, D)
        emb = self.grid.column_tokens(tokens, f_dim, n_columns).mean(1)  # (T, D): frequency patches averaged
        return emb.float(), self.grid.centres_ms(n_columns).to(emb.device)


def load_model(model_file_path: str = "", **model_options) -> EmbeddingModel:
    """An export folder (encoder.safetensors + config.json). model_options: mean, std,
    window_frames, batch_windows (defaults from the export's config, else AudioSet's statistics)."""
    if not model_file_path:
        raise ValueError("load_model needs the path of an export folder (python src/export.py ckpt_path=...)")
    config, _ = read_export(Path(model_file_path))
    data = config.get("data", {})
    encoder = from_pretrained(model_file_path)
    return EmbeddingModel(
        encoder,
        mean=float(model_options.get("mean", data.get("mean", -4.2677393))),
        std=float(model_options.get("std", data.get("std", 4.5689974))),
        window_frames=int(model_options.get("window_frames", data.get("target_length", encoder.input_shape[1]))),
        batch_windows=int(model_options.get("batch_windows", 16)),
    )


def get_timestamp_embeddings(audio: Tensor, model: EmbeddingModel) -> tuple[Tensor, Tensor]:
    """audio (n_sounds, n_samples) at 16 kHz -> embeddings (n, T, D) and timestamps (n, T) in ms."""
    if audio.dim() != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got {tuple(audio.shape)}")
    per_sound = [model.timestamp_embeddings(a) for a in audio]
    return torch.stack([e for e, _ in per_sound]), torch.stack([t for _, t in per_sound])


def get_scene_embeddings(audio: Tensor, model: EmbeddingModel) -> Tensor:
    """audio (n_sounds, n_samples) at 16 kHz -> (n, D): the mean of the timestamp embeddings."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
