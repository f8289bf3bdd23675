"""conv2d's fused epilogue and activation backward, shared by every
algorithm: ``store_epilogue``, the forward kernels' epilogue, and a Triton
kernel and its launcher ``conv2d_activation_grad`` (named and called like the
C++/CUDA launchers).

``store_epilogue``: cnnk/conv2d.h's epilogue on a forward kernel's
accumulator tile (pixels x output channels) in registers: z = acc + bias +
residual, z stored to ``preact`` when asked for (silu's backward reads it),
y = act(z) stored; the output is written once. Its options are the kernels'
compile-time constants, so an absent tensor costs nothing.

grad_z[n, k, p, q] = grad_y * act'(saved) (``common.masked_grad``), with
``saved`` the forward output (relu, relu6) or the pre-activation z (silu):
the gradient of z = conv + bias + residual, hence the residual's.

``_activation_grad_kernel``: a program owns BLOCK consecutive elements of the
output (N, K, P, Q) in grad_z's memory order (channels fastest for
channels_last, columns fastest otherwise, so the usual layouts load and
store coalesced), every tensor addressed through its four strides.
Memory-bound: reads grad_y and saved, writes grad_z once (saved is not read
without an activation). Limits: 32-bit offsets
(``cnnkernels._args.check_index_range``); computes in fp32 (fp64 for fp64,
interpreter only).
"""

import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type, apply_activation, masked_grad

from cnnkernels import _args
from cnnkernels._ext import Activation


@triton.jit
def store_epilogue(
    acc, n, p, q, k, m_mask, k_mask,
    b_ptr, bs,
    res_ptr, rs_n, rs_k, rs_p, rs_q,
    y_ptr, ys_n, ys_k, ys_p, ys_q,
    z_ptr, zs_n, zs_k, zs_p, zs_q,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_PREACT: tl.constexpr,
    OUTPUT_STRIDES: tl.constexpr, ACTIVATION: tl.constexpr, ACC: tl.constexpr,
):
    """Stores act(acc + bias + residual) to y (and the pre-activation to z
    with HAS_PREACT) for the tile of pixels (n, p, q) x output channels k.
    OUTPUT_STRIDES: the residual and z are laid out like y, so y's offset
    tile serves all three; otherwise y's is formed at the store, where it
    is first needed (not live through the epilogue)."""
    mask = m_mask[:, None] & k_mask[None, :]
    if OUTPUT_STRIDES:
        y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (k * ys_k)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + k * bs, mask=k_mask, other=0.0).to(ACC)[None, :]
    if HAS_RESIDUAL:
        if OUTPUT_STRIDES:
            res_off = y_off
        else:
            res_off = (n * rs_n + p * rs_p + q * rs_q)[:, None] + (k * rs_k)[None, :]
        acc += tl.load(res_ptr + res_off, mask=mask, other=0.0).to(ACC)
    if HAS_PREACT:
        if OUTPUT_STRIDES:
            z_off = y_off
        else:
            z_off = (n * zs_n + p * zs_p + q * zs_q)[:, None] + (k * zs_k)[None, :]
        tl.store(z_ptr + z_off, acc.to(z_ptr.dtype.element_ty), mask=mask)
    acc = apply_activation(acc, ACTIVATION)
    if not OUTPUT_STRIDES:
        y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (k * ys_k)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_grad_kernel(
    gy_ptr, s_ptr, gz_ptr,
    gys_n, gys_k, gys_p, gys_q,
    ss_n, ss_k, ss_p, ss_q,
    gzs_n, gzs_k, gzs_p, gzs_q,
    N, K, P, Q,
    CHANNELS_FAST: tl.constexpr, ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < N * K * P * Q
    if CHANNELS_FAST:
        k = e % K
        q = (e // K) % Q
        p = (e // (K * Q)) % P
        n = e // (K * Q * P)
    else:
        q = e % Q
        p = (e // Q) % P
        k = (e // (Q * P)) % K
        n = e // (Q * P * K)
    gy = tl.load(gy_ptr + n * gys_n + k * gys_k + p * gys_p + q * gys_q, mask=mask,
                 other=0.0).to(ACC)
    if ACTIVATION != 0:
        saved = tl.load(s_ptr + n * ss_n + k * ss_k + p * ss_p + q * ss_q, mask=mask,
                        other=0.0).to(ACC)
        gy = masked_grad(gy, saved, ACTIVATION)
    tl.store(gz_ptr + n * gzs_n + k * gzs_k + p * gzs_p + q * gzs_q,
             gy.to(gz_ptr.dtype.element_ty), mask=mask)


_BLOCK = 1024
_NUM_WARPS = 4


def conv2d_activation_grad(g, grad_y, saved, grad_z) -> None:
    """grad_z = grad_y * act'(saved) over the output (g.N, g.K, g.P, g.Q);
    saved may be None without an activation."""
    saved_arg = saved if saved is not None else grad_y
    grid = (triton.cdiv(g.N * g.K * g.P * g.Q, _BLOCK),)
    _activation_grad_kernel[grid](
        grad_y, saved_arg, grad_z,
        *grad_y.stride(), *saved_arg.stride(), *grad_z.stride(),
        g.N, g.K, g.P, g.Q,
        CHANNELS_FAST=_args.is_channels_last(grad_z), ACTIVATION=int(g.activation),
        ACC=acc_type(grad_y.dtype), BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )


def static_check_specs():
    """The kernel in every dtype and element order, for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for channels_fast in (False, True):
            specs.append(compile_spec(
                f"conv2d_activation_grad[{dtype},CHANNELS_FAST={channels_fast}]",
                _activation_grad_kernel,
                pointers=dict.fromkeys(("gy_ptr", "s_ptr", "gz_ptr"), ptr),
                constexprs={"CHANNELS_FAST": channels_fast, "ACTIVATION": int(Activation.silu),
                            "ACC": tl.float32, "BLOCK": _BLOCK},
                num_warps=_NUM_WARPS))
    return specs
