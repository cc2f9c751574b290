"""Gaps of Triton 3.6's interpreter (TRITON_INTERPRET=1: how every kernel here runs on a CPU),
patched on import, only when interpreting:

- a run-time scalar that bounds a loop becomes a Python int through int(ndarray of shape (1,)),
  which NumPy 2.4 refuses: read the one element instead;
- tl.dot multiplies bf16 operands as their uint16 bit patterns (NumPy has no bf16): widen them to
  fp32 first, which is exact;
- fp32 -> bf16 casts truncate; the GPU rounds to nearest even, and so does this;
- fp32 -> fp8 e4m3 casts round half up on the truncated bits and mishandle e4m3's top exponent
  (no infinities): torch's conversion rounds to nearest even as the GPU's cvt.rn.satfinite does
  (the MXFP8 producers never pass it a value beyond 448, where the two would differ).
"""

import numpy as np
import torch
import triton
import triton.language as tl


def _patch() -> None:
    from triton.runtime import interpreter as it

    patch_tensor = it._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        return it.TensorHandle(it._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32), tl.float32)

    create_dot = it.InterpreterBuilder.create_dot

    def create_dot_widened(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    cast_impl = it.InterpreterBuilder.cast_impl

    def cast_rounded(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return cast_impl(self, src, dst_type)
        bits = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded = np.where(np.isnan(src.data), np.uint16(0x7FC0), rounded)
        return it.TensorHandle(rounded, tl.bfloat16)

    fp_to_fp = it.InterpreterBuilder.create_fp_to_fp

    def fp_to_fp_rounded(self, src, dst_type, rounding_mode):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.float8e4nv:
            return fp_to_fp(self, src, dst_type, rounding_mode)
        q = torch.from_numpy(np.ascontiguousarray(src.data, np.float32)).to(torch.float8_e4m3fn)
        return it.TensorHandle(q.view(torch.uint8).numpy(), tl.float8e4nv)

    it._patch_lang_tensor = patch_lang_tensor
    it.InterpreterBuilder.create_fp_to_fp = fp_to_fp_rounded
    it.InterpreterBuilder.create_dot = create_dot_widened
    it.InterpreterBuilder.cast_impl = cast_rounded


if triton.knobs.runtime.interpret:
    _patch()
