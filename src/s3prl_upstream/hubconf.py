"""s3prl hub entries. Copy src/s3prl_upstream to s3prl/s3prl/upstream/ssamba (with this project
installed in the same environment) and add `from s3prl.upstream.ssamba.hubconf import *` to
s3prl/hub.py; then `run_downstream.py -u ssamba_local -k <export folder> ...` (docs/interop.md)."""

from src.s3prl_upstream.expert import UpstreamExpert


def ssamba_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """An encoder export folder of this project (python src/export.py or src.models.convert)."""
    return UpstreamExpert(ckpt, *args, **kwargs)


def ssamba_patch16(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """The same export read with its own 16x16 stride (160 ms frames) instead of SSAMBA's stride 10."""
    return UpstreamExpert(ckpt, *args, fstride=16, tstride=16, **kwargs)
