"""A LightningModule that trains a trivial parameter and records which samples each rank saw."""

import json
from pathlib import Path

import lightning as L
import torch


class Recorder(L.LightningModule):
    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch["index"].tolist()
        return ((batch["fbank"].mean() - self.weight) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        path = Path(self.out_dir) / f"rank{self.global_rank}.json"
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + self.seen))
