"""Run Triton kernels on the CPU through TRITON_INTERPRET=1 (numpy), for kernel tests without a GPU.
tests/conftest.py sets TRITON_INTERPRET before anything imports triton.

Two patches of triton 3.6's interpreter (the lock pins it):
- it converts scalar kernel arguments with int(array of shape (1,)), which numpy >= 2.3 refuses:
  converted through .reshape(-1)[0] instead;
- it patches triton.language into its numpy builder again (inspect.getmembers over the modules) at
  every call of a device function, though the kernel's launch has patched it: a third of a scan
  kernel test's time. A call now patches only what is not patched yet (the builder the patches call
  is the interpreter's one global builder, so a patch made earlier does what a new one would)."""

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

    import triton.language as tl

    _patch_lang = _interp._patch_lang

    def _patch_lang_once(fn):
        langs = [value for value in fn.__globals__.values() if value is tl or value is tl.core]
        if langs and not any(tl.core.is_builtin(lang.full) for lang in langs):  # patched already
            return _interp._LangPatchScope()  # sets nothing, restores nothing
        return _patch_lang(fn)

    _interp._patch_lang = _patch_lang_once
