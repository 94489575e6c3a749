"""The kernels of the SSAMBA encoder, below the model modules (as mamba-ssm keeps ops/ below
modules/): the modules import only this API, and backend.py alone chooses what runs it.

    conv1d_silu      the depthwise conv + silu that feeds each direction's scan
    selective_scan   the gated selective scan of every direction of a layer
    add_norm         the residual add + LayerNorm / RMSNorm of the pre-norm stream
    add_norm_pair    both of a pair_flip pair's add_norm steps, which read the same stream
    bimamba_inner    the whole mixer from in_proj's input to out_proj's input (projections, conv, scans)

ops.py holds these and their layouts; portable.py the plain PyTorch versions; the *_triton.py files
the Triton kernels (scan_kernels.py: how the scan kernels work).
"""

from src.kernels.backend import BACKENDS, ENV_VAR, mamba_kernels_available, resolve_backend
from src.kernels.ops import add_norm, add_norm_pair, bimamba_inner, conv1d_silu, selective_scan

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "add_norm",
    "add_norm_pair",
    "bimamba_inner",
    "conv1d_silu",
    "mamba_kernels_available",
    "resolve_backend",
    "selective_scan",
]
