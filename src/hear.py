"""Embeddings with the HEAR API (hearbenchmark.com/hear-api.html), without Lightning or Hydra.

    import src.hear as hear
    model = hear.load_model("exports/amba_tiny_400")          # an export folder (src/export.py)
    scene = hear.get_scene_embeddings(audio, model)            # audio: (n_sounds, n_samples), 16 kHz
    emb, ts = hear.get_timestamp_embeddings(audio, model)      # (n, T, D) and centres in ms

Audio is cut into windows of the pretraining length (1024 frames = 10.24 s by default), each window
encoded, and every time column of patches averaged over frequency: one embedding per patch stride
(160 ms for 16x16 patches, 100 ms with stride 10), stamped at the centre of its patch. The scene
embedding is the mean of the timestamp embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from src.data.audio import FbankConfig, fbank, normalize, pad_or_cut
from src.models.export import from_pretrained, read_export

SAMPLE_RATE = 16000
FRAME_MS = 10.0


class EmbeddingModel(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, mean: float, std: float, window_frames: int, batch_windows: int = 16):
        super().__init__()
        self.encoder = encoder.eval()
        self.mean, self.std, self.window_frames, self.batch_windows = mean, std, window_frames, batch_windows
        self.scene_embedding_size = self.timestamp_embedding_size = encoder.embed_dim

    def windows(self, audio: Tensor) -> tuple[Tensor, int]:
        """(n_samples,) -> (n_windows, 1, 128, window_frames) normalised fbanks and the real frame count."""
        spec = fbank(audio.float().unsqueeze(0).cpu(), FbankConfig())  # (1, 128, frames)
        frames = spec.shape[-1]
        n_windows = max(1, -(-frames // self.window_frames))
        spec = pad_or_cut(spec, n_windows * self.window_frames)
        spec = normalize(spec, self.mean, self.std)
        return spec.view(1, 128, n_windows, self.window_frames).permute(2, 0, 1, 3).contiguous(), frames

    @torch.no_grad()
    def timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """One sound: (T, D) embeddings and (T,) centres in ms."""
        wins, frames = self.windows(audio)
        device = next(self.encoder.parameters()).device
        f_dim, t_dim = self.encoder.grid_for(128, self.window_frames)
        prefix = self.encoder.num_prefix_tokens
        columns = []
        for start in range(0, len(wins), self.batch_windows):
            tokens = self.encoder(wins[start : start + self.batch_windows].to(device))[:, prefix:]  # (w, f*t, D)
            columns.append(tokens.reshape(tokens.shape[0], f_dim, t_dim, -1).mean(1).flatten(0, 1))  # (w*t, D)
        emb = torch.cat(columns).float()
        fshape, tshape = self.encoder.patch_shape
        tstride = self.encoder.patch_stride[1]
        starts = torch.cat([w * self.window_frames + tstride * torch.arange(t_dim) for w in range(len(wins))])
        keep = starts < frames
        centres = (starts[keep] + tshape / 2) * FRAME_MS
        return emb[keep.to(emb.device)], centres.float()


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
