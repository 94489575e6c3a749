"""s3prl hub entries: `python -m src.s3prl_upstream.superb -u ssamba_local -k <export folder> ...`
registers them in s3prl.hub and runs s3prl's runner (docs/interop.md)."""

from src.s3prl_upstream.expert import UpstreamExpert


def ssamba_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """An encoder export folder of this project (python -m src.export or src.models.convert)."""
    return UpstreamExpert(ckpt, *args, **kwargs)


def ssamba_patch16(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """The same export read with its own 16x16 stride (160 ms frames) instead of SSAMBA's stride 10."""
    return UpstreamExpert(ckpt, *args, fstride=16, tstride=16, **kwargs)
