"""Two gaps of Triton 3.6's interpreter (TRITON_INTERPRET=1: how every kernel here runs on a CPU),
patched on import, only when interpreting:

- a run-time scalar that bounds a loop becomes a Python int through int(ndarray of shape (1,)),
  which NumPy 2.4 refuses: read the one element instead;
- tl.dot multiplies bf16 operands as their uint16 bit patterns (NumPy has no bf16): widen them to
  fp32 first, which is exact;
- fp32 -> bf16 casts truncate; the GPU rounds to nearest even, and so does this.
"""

import numpy as np
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

    it._patch_lang_tensor = patch_lang_tensor
    it.InterpreterBuilder.create_dot = create_dot_widened
    it.InterpreterBuilder.cast_impl = cast_rounded


if triton.knobs.runtime.interpret:
    _patch()
