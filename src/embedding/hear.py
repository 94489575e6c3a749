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

from src.data.audio import AudioReader, check_samples, load_audio
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
        (T,) those centres in ms (float64), a regular hop of tstride frames. A sound longer than
        `batch_windows` windows is embedded a batch of windows at a time (the same numbers, memory
        bounded by the batch, not by the sound's length)."""
        audio = audio.reshape(-1)
        check_samples("audio", audio.detach().cpu().numpy())  # else NaN embeddings would come without a word
        if audio.shape[-1] <= self.stream_above:
            n_columns = self.grid.columns_inside(audio.shape[-1])
            return self._embed([self.grid.windows(audio, self.mean, self.std, n_columns)], n_columns)
        return self.stream_embeddings(lambda a, b: audio[a:b].float().cpu(), len(audio), audio.double().mean().item())

    @property
    def stream_above(self) -> int:
        """Sounds longer than this (samples: a batch of windows) are embedded in parts."""
        return self.batch_windows * self.grid.hop * self.grid.samples_per_column // self.grid.tstride

    def file_embeddings(self, path) -> tuple[Tensor, Tensor]:
        """timestamp_embeddings of an audio file, a long one read in parts (bounded memory)."""
        reader = AudioReader(path)
        if reader.n_samples <= self.stream_above:
            return self.timestamp_embeddings(load_audio(path)[0])
        return self.stream_embeddings(reader.read, reader.n_samples, reader.mean())

    @torch.no_grad()
    def stream_embeddings(self, read, n_samples: int, dc: float) -> tuple[Tensor, Tensor]:
        """timestamp_embeddings of a sound read in parts: read(start, stop) -> its samples [start,
        stop) at 16 kHz (an AudioReader's read for a file); dc: the sound's mean."""
        n_columns = self.grid.columns_inside(n_samples)
        parts = self.grid.stream(read, n_samples, dc, self.mean, self.std, n_columns, self.batch_windows)
        return self._embed(parts, n_columns)

    @torch.no_grad()
    def _embed(self, window_batches, n_columns: int) -> tuple[Tensor, Tensor]:
        device = next(self.encoder.parameters()).device
        f_dim, _ = self.encoder.grid
        prefix = self.encoder.num_prefix_tokens
        columns = []
        for wins in window_batches:  # (n, 1, F, window)
            for i in range(0, len(wins), self.batch_windows):
                tokens = self.encoder(wins[i : i + self.batch_windows].to(device))[:, prefix:]  # (n, f * columns, D)
                columns.append(self.grid.column_tokens(tokens, f_dim, len(tokens) * self.grid.columns).mean(1))
        emb = torch.cat(columns)[:n_columns]  # (T, D): frequency patches averaged
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
        raise UserError("load_model needs the path of an export folder (python -m src.export ckpt_path=...)")
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
