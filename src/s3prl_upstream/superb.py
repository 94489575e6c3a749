"""s3prl's SUPERB runner with this project's upstream, nothing copied into site-packages:

    pip install -e '.[superb]'
    python -m src.s3prl_upstream.superb -m train -n sid_ssamba -u ssamba_local -k exports/amba_tiny_400 \
        -d voxceleb1 -s hidden_states -f

Before s3prl is imported, `prepare_s3prl` supplies what s3prl 0.4.18 expects and this stack no longer
has (torchaudio 2.11 removed `set_audio_backend` and `sox_effects`, which s3prl calls or imports at
import time, and decodes only through torchcodec; huggingface_hub 1.x removed `HfFolder` and
`Repository`): audio is read with soundfile and the sox effects SUPERB's datasets use (mono,
resampling, gain) are done in torch. It also registers the upstream entries
(`ssamba_local`, `ssamba_patch16`) in `s3prl.hub`, where the runner looks them up. `main` then runs
s3prl's `run_downstream.py` from s3prl's folder (its downstream configs are paths relative to it),
with the paths given by -k, -e and -p made absolute first and, unless -p is given, the results in
./result/downstream/<name> where the command was started. s3prl's PyPI package ships no downstream
configs: for -d speech_commands, voxceleb1 and emotion the runner gets s3prl 0.4.18's own from
configs/ here unless -c is given. Paths inside -o overrides (dataset folders) must be absolute.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import types
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"  # SUPERB's KS1, SID and ER configs from s3prl 0.4.18


def _load(path, *args, **kwargs):
    """torchaudio.load through soundfile: ((channels, samples) float32, sample rate)."""
    import soundfile as sf
    import torch

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


def _no_sox(*args, **kwargs):
    raise RuntimeError("torchaudio 2.11 has no sox_effects.apply_effects_tensor")


def _no_catalyst(*args, **kwargs):
    raise RuntimeError("SUPERB's speech_commands task under DDP needs catalyst, which does not install with this pip")


def _apply_effects_file(path, effects, *args, **kwargs):
    """The sox effects SUPERB's datasets ask for (channels 1, rate, gain in dB), without sox."""
    from src.data.audio import resample

    wav, rate = _load(path)
    for name, *values in effects:
        if name == "channels" and values == ["1"]:
            wav = wav.mean(0, keepdim=True)
        elif name == "rate":
            wav, rate = resample(wav, rate, int(values[0])), int(values[0])
        elif name == "gain":
            wav = wav * 10 ** (float(values[0]) / 20)
        else:
            raise RuntimeError(f"sox effect {name!r} is not available with torchaudio 2.11 (no sox_effects)")
    return wav, rate


def prepare_s3prl():
    """Shim the removed APIs, import s3prl, register the upstream; returns the s3prl.hub module."""
    import huggingface_hub

    from src.data.audio import torchaudio_module

    torchaudio = torchaudio_module()

    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda *args, **kwargs: None  # decoding goes through soundfile
    if "torchaudio.sox_effects" not in sys.modules and not hasattr(torchaudio, "sox_effects"):
        sox = types.ModuleType("torchaudio.sox_effects")
        sox.apply_effects_file = _apply_effects_file
        sox.apply_effects_tensor = _no_sox  # imported by the MOS upstream, not used by SUPERB's tasks
        sys.modules["torchaudio.sox_effects"] = torchaudio.sox_effects = sox
    if importlib.util.find_spec("torchcodec") is None:  # torchaudio 2.11 decodes through torchcodec
        torchaudio.load = _load
    if not hasattr(huggingface_hub, "HfFolder"):

        class HfFolder:
            @staticmethod
            def get_token():
                return huggingface_hub.get_token()

        huggingface_hub.HfFolder = HfFolder
    if not hasattr(huggingface_hub, "Repository"):  # only for pushing results to the Hub

        class Repository:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("huggingface_hub 1.x has no Repository: pushing to the Hub is unavailable")

        huggingface_hub.Repository = Repository

    if (
        "catalyst" not in sys.modules and importlib.util.find_spec("catalyst") is None
    ):  # KS1's expert imports it for DDP only; it no longer installs
        for name in ("catalyst", "catalyst.data", "catalyst.data.sampler"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["catalyst.data.sampler"].DistributedSamplerWrapper = _no_catalyst

    import s3prl.hub as hub

    from src.s3prl_upstream import hubconf

    hub.ssamba_local, hub.ssamba_patch16 = hubconf.ssamba_local, hubconf.ssamba_patch16
    return hub


def _value_at(argv: list[str], flags: tuple[str, ...]) -> int | None:
    """The index in argv of the value given to any of flags, or None."""
    for flag in flags:
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv.index(flag) + 1
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prepare_s3prl()
    import s3prl

    here = Path.cwd()
    for flags in (("-k", "--upstream_ckpt"), ("-e", "--past_exp"), ("-p", "--expdir")):
        i = _value_at(argv, flags)
        if i is not None:
            argv[i] = str((here / argv[i]).resolve())
    task, name = _value_at(argv, ("-d", "--downstream")), _value_at(argv, ("-n", "--expname"))
    shipped = CONFIGS / f"{argv[task]}.yaml" if task is not None else None
    if shipped is not None and shipped.exists() and _value_at(argv, ("-c", "--config")) is None:
        argv += ["-c", str(shipped)]  # s3prl's PyPI package has no downstream configs
    if name is not None and _value_at(argv, ("-p", "--expdir")) is None:  # results where the user is
        argv += ["-p", str(here / "result" / "downstream" / argv[name])]
    root = Path(s3prl.__file__).parent
    os.chdir(root)
    sys.argv = [str(root / "run_downstream.py"), *argv]
    runpy.run_path(str(root / "run_downstream.py"), run_name="__main__")


if __name__ == "__main__":
    main()
