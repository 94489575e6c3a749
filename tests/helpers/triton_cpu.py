"""Run Triton kernels on the CPU through TRITON_INTERPRET=1 (numpy), for kernel tests without a GPU.
tests/conftest.py sets TRITON_INTERPRET before anything imports triton.

triton 3.6's interpreter converts scalar kernel arguments with int(array of shape (1,)), which
numpy >= 2.3 refuses; the patch below converts through .reshape(-1)[0] instead."""

import os

import torch

# only where there is no GPU: on a CUDA machine the same tests run the compiled kernels
INTERPRETED = not torch.cuda.is_available()
if INTERPRETED:
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.runtime.interpreter as _interp

    _original = _interp._patch_lang_tensor

    def _patched(tensor, scope):
        _original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    _interp._patch_lang_tensor = _patched
