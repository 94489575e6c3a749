"""How these files were made, by the code of commit eb12644 (before the EncoderConfig redesign):
    python tests/data/legacy_eb12644/make.py
It is kept as a record; today's code loads what it wrote (tests/test_legacy.py) but cannot rerun it."""

from pathlib import Path

import lightning as L
import torch

from src.models.components import build_encoder
from src.models.export import save_encoder
from src.models.finetune_module import KS2Module
from src.models.ssl_module import SSLModule

HERE = Path(__file__).resolve().parent


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def save_ckpt(module, path):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


torch.manual_seed(0)
ssl = randomize(
    SSLModule(dict(backbone="ssamba", size="tiny", embed_dim=32, depth=2, input_tdim=128), mask_patches=20), 1
)
save_ckpt(ssl, HERE / "ssl.ckpt")
save_encoder(ssl.encoder, HERE / "ssamba_export", extra={"data": {"mean": -3.9, "std": 3.5, "target_length": 128}})
ft = randomize(KS2Module(encoder={}, pretrained=str(HERE / "ssamba_export"), input_tdim=128, num_classes=5), 2)
save_ckpt(ft, HERE / "ks2.ckpt")
ssast = randomize(build_encoder("ssast", "tiny", embed_dim=48, depth=2, input_tdim=128, fstride=10, tstride=10), 3)
save_encoder(ssast, HERE / "ssast_export")

x = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(4))
with torch.no_grad():
    outputs = {
        "input": x,
        "ssamba": ssl.encoder.eval()(x),
        "ks2_logits": ft.eval()(x),
        "ssast": ssast.eval()(x),
    }
torch.save(outputs, HERE / "outputs.pt")
