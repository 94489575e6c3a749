"""s3prl UpstreamExpert: 16 kHz waveforms in, every layer's hidden states out (time-major).

Follows s3prl's upstream contract (upstream/example/expert.py) and its built-in SSAST upstream's
treatment of patch models: each utterance's fbank (normalised with the statistics the export
records) is cut into windows of the export's input length (its target_length; SSAMBA's own s3prl
setup used 1000 frames: window_frames=1000) whose patch columns tile time on one grid
(src/embedding/windows.py), each
window's patch tokens are reshaped to (frequency, time) and the frequency patches folded into the
feature dimension, giving one frame per time stride: (B, T', n_freq_patches * D) per layer, T' =
ceil(samples / get_downsample_rates()). With the SSAMBA setup's fstride = tstride = 10 the patch
kernel is copied into the new stride and the positional embedding adapted, as in fine-tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from src.embedding.windows import load_frontend


class UpstreamExpert(nn.Module):
    def __init__(
        self,
        ckpt: str,
        model_config: str | None = None,
        window_frames: int | None = None,
        fstride: int = 10,
        tstride: int = 10,
        **kwargs,
    ):
        """window_frames: None for the export's target_length."""
        super().__init__()
        frontend = load_frontend(ckpt, window_frames, (fstride, tstride))
        self.encoder, self.grid, self.mean, self.std = frontend.encoder, frontend.grid, frontend.mean, frontend.std

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return self.grid.samples_per_column

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor]]:
        """Every utterance is cut and encoded on its own (nothing depends on its neighbours) and gives
        ceil(samples / downsample rate) frames; the batch is padded to the longest."""
        rate = self.get_downsample_rates()
        counts = [max(1, -(-len(w) // rate)) for w in wavs]
        windows = [self.grid.windows(w, self.mean, self.std, n) for w, n in zip(wavs, counts)]
        per_clip = [len(w) for w in windows]
        device = next(self.encoder.parameters()).device
        batch = torch.cat(windows).to(device)  # (sum of windows, 1, F, window)
        out, states = self.encoder(batch, return_hidden=True)
        f_dim, _ = self.encoder.grid
        prefix = self.encoder.num_prefix_tokens
        hidden = []
        for h in [*states, out]:
            clips = h[:, prefix:].split(per_clip)  # per utterance: (n_windows, f * columns, D)
            frames = [self.grid.column_tokens(c, f_dim, n).flatten(1) for c, n in zip(clips, counts)]  # (n, f*D)
            hidden.append(pad_sequence(frames, batch_first=True))  # (B, max frames, f * D)
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}
