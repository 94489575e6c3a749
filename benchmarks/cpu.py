"""What a CPU user pays: the portable scan against a plain step-by-step loop, and embedding a long file.

    python -m benchmarks.cpu [--minutes 20] [--out docs]

Times (best of --repeats, no autograd) the portable scan (`scan_portable_bel`, what the encoder runs
without CUDA) and the plainest correct loop in torch (one step at a time: decay, input, read-out) at
(batch, channels, length) = (2, 384, 513), one bimamba-v2 set at the pretraining shape, and
(1, 384, 60000), a long clip; then the wall time of `python -m src.embedding`'s folder embedding on one
--minutes file with the tiny preset at full depth (24 layers, 1024-frame windows). Writes
<out>/benchmarks/cpu.json, the table in <out>/benchmarks/cpu.md and <out>/figures/cpu.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.provenance import provenance
from src.embedding import hear
from src.embedding.folder import embed_folder
from src.kernels.portable import scan_portable_bel
from src.models.components import build_encoder, encoder_config
from src.models.pretrained import save_encoder
from src.utils.errors import command
from src.utils.io import write_json, write_text

SHAPES = [(2, 384, 513), (1, 384, 60000)]
D_STATE = 16


def plain_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The selective scan one step at a time, as the recurrence reads."""
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        state = (
            torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


def scan_inputs(batch: int, dim: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=0.5 * torch.randn(batch, dim, length, generator=g),
        A=-torch.rand(dim, D_STATE, generator=g) * 4 - 0.1,
        B=torch.randn(batch, D_STATE, length, generator=g),
        C=torch.randn(batch, D_STATE, length, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=0.5 * torch.randn(dim, generator=g),
        delta_softplus=True,
    )


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def scan_rows(repeats: int) -> list[dict]:
    rows = []
    for shape in SHAPES:
        inputs = scan_inputs(*shape)
        portable = best_seconds(lambda a=inputs: scan_portable_bel(**a), repeats)
        plain = best_seconds(lambda a=inputs: plain_loop(**a), repeats)
        err = (scan_portable_bel(**inputs) - plain_loop(**inputs)).abs().max().item()
        rows.append({"shape": list(shape), "portable_s": portable, "plain_loop_s": plain, "max_abs_diff": err})
        print(f"scan {shape}: portable {portable:.3f} s, plain loop {plain:.3f} s", flush=True)
    return rows


def embed_row(minutes: float) -> dict:
    import numpy as np
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder = build_encoder(encoder_config("ssamba", "tiny", target_length=1024))  # full depth: 24 layers
        save_encoder(encoder, tmp / "export", data={"mean": -4.27, "std": 4.57})
        rng = np.random.default_rng(0)
        (tmp / "in").mkdir()
        sf.write(
            tmp / "in" / "long.wav", (0.1 * rng.standard_normal(int(minutes * 60 * 16000))).astype("float32"), 16000
        )
        model = hear.load_model(str(tmp / "export"))
        start = time.perf_counter()
        embed_folder(model, tmp / "in", tmp / "out", timestamps=True)
        seconds = time.perf_counter() - start
        frames = np.load(tmp / "out" / "long.timestamps.npy").shape[0]
    print(f"embed {minutes} min file: {seconds:.1f} s ({frames} timestamps)", flush=True)
    return {"minutes": minutes, "seconds": seconds, "timestamps": frames, "preset": "tiny, 24 layers, 1024 frames"}


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    result = {"machine": machine, "scan": scan_rows(args.repeats), "embed": embed_row(args.minutes)}
    result["measured"] = provenance(f"CPU: {machine['cpu']}, {machine['cores']} cores")
    write_json(args.out / "benchmarks" / "cpu.json", result)
    table = report.cpu_table(result)
    write_text(args.out / "benchmarks" / "cpu.md", table)
    report.render_docs(data=args.out / "benchmarks", names=["cpu"])
    print(table)
    _plot(result, args.out / "figures" / "cpu.png")
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(tuple(r["shape"])) for r in result["scan"]]
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([i - 0.2 for i in x], [r["portable_s"] for r in result["scan"]], 0.4, label="portable scan")
    ax.bar([i + 0.2 for i in x], [r["plain_loop_s"] for r in result["scan"]], 0.4, label="plain loop")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.set_title(f"selective scan on the CPU ({result['machine']['cores']} cores)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
