"""Embeddings with the HEAR API (hearbenchmark.com/hear-api.html), without Lightning or Hydra.

    import src.embedding.hear as hear
    model = hear.load_model("exports/amba_tiny_400")          # an export folder (src/export.py)
    scene = hear.get_scene_embeddings(audio, model)            # audio: (n_sounds, n_samples), 16 kHz
    emb, ts = hear.get_timestamp_embeddings(audio, model)      # (n, T, D) and centres in ms

Audio is normalised with the statistics the export records and cut into windows of the encoder's
input length (its target_length: 1024 frames = 10.24 s for the official pretraining) whose patch
columns tile time on one grid (windows.py), each window encoded, and every time column of
patches averaged over frequency: one embedding per patch stride (160 ms for 16x16 patches, 100 ms
with stride 10), stamped at the centre of its patch, for every column centred inside the audio. The
scene embedding is the mean of the timestamp embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.embedding.windows import Frontend, load_frontend
from src.utils.errors import UserError

SAMPLE_RATE = 16000


class EmbeddingModel(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, frontend: Frontend, batch_windows: int = 16):
        super().__init__()
        self.encoder, self.grid = frontend.encoder, frontend.grid
        self.mean, self.std, self.batch_windows = frontend.mean, frontend.std, batch_windows
        self.scene_embedding_size = self.timestamp_embedding_size = self.encoder.embed_dim

    @torch.no_grad()
    def timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """One sound: (T, D) embeddings, one per patch column whose centre lies inside the audio, and
        (T,) those centres in ms, a regular hop of tstride frames."""
        n_columns = self.grid.columns_inside(audio.shape[-1])
        wins = self.grid.windows(audio, self.mean, self.std, n_columns)  # (n, 1, F, window)
        device = next(self.encoder.parameters()).device
        f_dim, _ = self.encoder.grid
        prefix = self.encoder.num_prefix_tokens
        tokens = torch.cat(
            [
                self.encoder(wins[i : i + self.batch_windows].to(device))[:, prefix:]
                for i in range(0, len(wins), self.batch_windows)
            ]
        )  # (n, f * columns, D)
        emb = self.grid.column_tokens(tokens, f_dim, n_columns).mean(1)  # (T, D): frequency patches averaged
        return emb.float(), self.grid.centres_ms(n_columns).to(emb.device)


def load_model(
    model_file_path: str = "",
    window_frames: int | None = None,
    mean: float | None = None,
    std: float | None = None,
    batch_windows: int = 16,
) -> EmbeddingModel:
    """An export folder (encoder.safetensors + config.json). window_frames, mean, std: None for the
    export's own input length and normalisation (see windows.load_frontend)."""
    if not model_file_path:
        raise UserError("load_model needs the path of an export folder (python src/export.py ckpt_path=...)")
    return EmbeddingModel(load_frontend(model_file_path, window_frames, None, mean, std), batch_windows)


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
