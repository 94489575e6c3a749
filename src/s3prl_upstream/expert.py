"""s3prl UpstreamExpert: 16 kHz waveforms in, every layer's hidden states out (time-major).

Follows s3prl's upstream contract (upstream/example/expert.py) and its built-in SSAST upstream's
treatment of patch models: the audio is cut into windows (10 s = 1000 frames by default, as
SSAMBA's s3prl setup), each window's patch tokens are reshaped to (frequency, time) and the
frequency patches folded into the feature dimension, giving one frame per time stride:
(B, T', n_freq_patches * D) per layer. With the SSAMBA setup's fstride = tstride = 10 the patch
kernel is copied into the new stride and the positional embedding adapted, as in fine-tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from src.data.audio import FbankConfig, fbank, normalize, pad_or_cut
from src.models.export import from_pretrained, read_export

SAMPLES_PER_FRAME = 160  # 10 ms at 16 kHz


class UpstreamExpert(nn.Module):
    def __init__(
        self,
        ckpt: str,
        model_config: str | None = None,
        window_frames: int = 1000,
        fstride: int | None = 10,
        tstride: int | None = 10,
        **kwargs,
    ):
        super().__init__()
        config, _ = read_export(ckpt)
        data = config.get("data", {})
        self.mean, self.std = data.get("mean", -4.2677393), data.get("std", 4.5689974)
        self.encoder = from_pretrained(ckpt)
        self.encoder.resize_input(128, window_frames, fstride, tstride)
        self.window_frames = window_frames

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return SAMPLES_PER_FRAME * self.encoder.patch_stride[1]

    def _windows(self, wav: Tensor) -> Tensor:
        spec = normalize(fbank(wav.float().unsqueeze(0), FbankConfig()), self.mean, self.std)  # (1, 128, frames)
        n = max(1, -(-spec.shape[-1] // self.window_frames))
        spec = pad_or_cut(spec, n * self.window_frames)
        return spec.view(1, 128, n, self.window_frames).permute(2, 0, 1, 3)  # (n, 1, 128, window)

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor]]:
        lengths = [len(w) for w in wavs]
        padded = pad_sequence(wavs, batch_first=True)  # (B, max_len)
        windows = [self._windows(w) for w in padded]  # each (n, 1, 128, window)
        n_windows = windows[0].shape[0]
        batch = torch.cat(windows).to(next(self.encoder.parameters()).device)  # (B * n, 1, 128, window)
        out, states = self.encoder(batch, return_hidden=True)
        f_dim, t_dim = self.encoder.grid_for(128, self.window_frames)
        prefix = self.encoder.num_prefix_tokens
        frames_out = len(range(0, max(lengths), self.get_downsample_rates()))
        hidden = []
        for h in [*states, out]:
            h = h[:, prefix:].reshape(len(wavs), n_windows, f_dim, t_dim, -1)  # (B, n, f, t, D)
            h = h.permute(0, 1, 3, 2, 4).reshape(len(wavs), n_windows * t_dim, -1)  # (B, n*t, f*D)
            hidden.append(h[:, :frames_out])
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}
