"""gram: Gram matrices of feature maps, the style representation of neural
style transfer (the course notes, 4.1): G[k, k'] = sum over the positions
(i, j) of a[i, j, k] a[i, j, k'].

Operators (``torch.ops.cnnk.*``), each a plan (cnnkernels/ops/_define.py):
``gram_matrix(features, other, scale)``: features (B, C, L), result
(B, C, C) = scale * F F^T, or with ``other`` (F's shape) the symmetrised
product scale * (F O^T + O F^T); ``gram_matrix_backward(grad_gram,
features, scale)`` = scale * (dG + dG^T) F. The launchers have the same
names and arguments on every backend: kernels/gram.py (Triton),
csrc/cpu/gram.cpp and csrc/cuda/gram.cu (through _C; the CUDA ones also
take torch's TF32 switch for matmuls, which lets fp32 run on tensor cores
as TF32); the kernels compute the upper triangle's tiles only and mirror
them on store (csrc/include/cnnk/gram.h).

The forwards (``gram_matrix`` and ``style_loss``) on the CUDA and Triton
backends split the reduction over L across blocks when the upper
triangle's tiles times the images are too few to fill the GPU (VGG's
conv1_1: C = 64, one tile): ``split_plan`` picks the slices, the plan
allocates their partial tiles (the launchers' workspace argument), and the
kernels add them in slice order (deterministic); see csrc/include/cnnk/gram.h.

Normalisation (``normalize=``, applied inside the kernels' store):
``"none"`` (the default) is the course's G; ``"hw"`` divides by the
positions L = H * W; ``"chw"`` by C * H * W (the common tutorial Gram,
``bmm(F, F^T) / (C * H * W)``). An empty plane gives zeros.

The content loss (the notes' J_content = sum (a_C - a_G)^2 / (2 n_H n_W
n_C)) runs on two more operators: ``difference_dot(u, v, a, b, scale)`` =
scale * sum (u - v)(a - b), a 0-d tensor (one pass: differences, product,
a chunked sum whose partials are added in order, deterministic), and
``scaled_difference(a, b, weight, scale)`` = scale * weight * (a - b) with
a 0-d weight (the incoming gradient, read by the kernel: no host sync).
Each is the other's derivative, so every order of derivative composes the
two; None operands are zeros. Tensors are read flat in their memory order
(NCHW and channels_last without a copy).

The style loss runs on one fused operator, ``style_loss(features, target,
gram_scale, loss_scale, keep_residual)`` -> (loss, residual): with
R = s F F^T - T (s the Gram's normalisation, T the target, (B, C, C), any
strides: a shared target is expanded with batch stride 0), loss =
w * sum R^2 (w the loss's normalisation). Each backend computes the Gram's
upper-triangle tiles, subtracts the target (both triangles: T need not be
symmetric), squares and sums per tile, then adds the tiles' partials in
order (deterministic, no atomics): the Gram is never written. With
``keep_residual`` the same pass writes R, which the derivatives read:
dF = s (dR + dR^T) F with dR = 2 w g R (the Gram's backward op after
``scaled_difference``, which reads the incoming gradient g on the device),
dT = -dR. Why save R rather than recompute it in the backward: R is
B * C^2 values, written once (at most what torch's composition keeps, its
G), while recomputing it costs the forward's B * C * (C + tile) * L
multiply-adds again, half the backward's own product or more (VGG's
conv1_1 at 256^2: 16 KiB of R against 134 M multiply-adds). The public
function asks for R only when derivatives will be taken, so a loss
evaluated without them writes nothing but the partials. R is a
differentiable output (R' = s (F' F^T + F F'^T) - T', the symmetrised
product): the double backward and the jvp compose the Gram ops and
``difference_dot`` on it.

Derivatives of the Gram ops: both are bilinear, so two ops close the algebra. With
G = s F F^T: dF = s (dG + dG^T) F (the backward op) and the tangent
s (F' F^T + F F'^T) (the symmetrised product). The backward op's
derivatives: d(grad_gram) = s (gg F^T + F gg^T) (the symmetrised product
again) and dF = s (dG + dG^T) gg (the backward op).
"""

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import (
    Family,
    Launch,
    define_op,
    derivatives_needed,
    incoming_scalar,
    save,
)

FAMILY = Family(name="gram", public=("gram_matrix", "style_loss", "content_loss"),
                triton_modules=("cnnkernels.kernels.gram",),
                bench_module="cnnkernels.bench.gram")

__all__ = list(FAMILY.public)

NORMALIZATIONS = ("none", "hw", "chw")
STYLE_NORMALIZATIONS = ("course", "tutorial")


# The split reduction over L (csrc/include/cnnk/gram.h): the CUDA and
# Triton forwards cut L into slices when the upper triangle's tiles times
# the images are too few blocks to fill the GPU. The rule (split_plan):
# splits = clamp(ceil(SPLIT_TARGET_BLOCKS / (B * upper tiles)), 1,
# L // SPLIT_MIN_SLICE), then slices of whole SPLIT_ALIGN steps.
# SPLIT_TARGET_BLOCKS is fixed, not read from the device (the Triton
# interpreter has none): 2 blocks per SM of a 132-SM H100. SPLIT_MIN_SLICE
# keeps a slice's product (tile^2 x 512 multiply-adds) well above what
# phase 2 reads back per element (one accumulator per slice).
SPLIT_TARGET_BLOCKS = 264
SPLIT_MIN_SLICE = 512
SPLIT_ALIGN = 64  # cnnk::kGramSliceAlign: a whole number of every kernel's reduction steps


def split_plan(B: int, C: int, L: int, tile: int) -> tuple[int, int]:
    """(splits, slice_len) of the split reduction for a backend whose blocks
    own ``tile`` x ``tile`` output tiles: (1, L) when one pass fills the
    GPU, else ``splits`` slices of ``slice_len`` positions (a multiple of
    SPLIT_ALIGN, the last slice shorter), splits = ceil(L / slice_len)."""
    side = -(-C // tile)
    blocks = B * side * (side + 1) // 2
    wanted = min(-(-SPLIT_TARGET_BLOCKS // blocks) if blocks else 1, L // SPLIT_MIN_SLICE)
    if wanted <= 1:
        return 1, L
    slice_len = -(-L // wanted)
    slice_len = -(-slice_len // SPLIT_ALIGN) * SPLIT_ALIGN
    return -(-L // slice_len), slice_len


@dataclass(frozen=True)
class GramGeometry:
    """Sizes of one Gram problem, field for field ``cnnk::GramGeometry``
    (csrc/include/cnnk/gram.h): features (B, C, L), gram (B, C, C); the
    forward's split of L into ``splits`` slices of ``slice_len`` (1 and L:
    one pass)."""

    B: int
    C: int
    L: int
    splits: int
    slice_len: int

    def index_extent(self) -> int:
        """The largest value the 32-bit kernels' index arithmetic reaches
        besides tensor offsets (checked on their own): sizes and the tile
        grid (C tiles squared)."""
        return max(self.B, self.C * self.C, self.L)


def _triton():
    from cnnkernels.kernels import gram

    return gram


def _tf32_flag(backend: str) -> tuple:
    """The CUDA launchers take torch's TF32 switch for matmuls
    (``torch.backends.cuda.matmul.allow_tf32``, what bmm follows): fp32 Gram
    products then run on tensor cores as TF32. Triton's read it themselves,
    the cpu's have no TF32."""
    return (torch.backends.cuda.matmul.allow_tf32,) if backend == "cuda" else ()


def _features(features: Tensor, name: str, op: str) -> GramGeometry:
    _args.check_tensor(features, name, ndim=3)
    if not features.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {features.dtype}")
    B, C, L = features.shape
    return GramGeometry(B, C, L, 1, L)


def _split_tile(backend: str, dtype: torch.dtype) -> int:
    """The output tile of a backend's split phase-1 blocks, for split_plan;
    0 for the cpu (it splits L its own way). CUDA: 64 on tensor cores (f16,
    bf16, f32 as TF32: csrc/cuda/gram.cu's use_mma), 32 on the CUDA cores;
    Triton: SPLIT_TILE (kernels/gram.py)."""
    if backend == "cuda":
        tensor_cores = dtype in (torch.float16, torch.bfloat16) or (
            dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32)
        return 64 if tensor_cores else 32
    if backend == "triton":
        return _triton().SPLIT_TILE
    return 0


def _split(backend: str, features: Tensor) -> tuple[int, int, tuple]:
    """The concrete backend's split of the forward over L: (splits,
    slice_len, the workspace argument), the workspace (splits, B, C, C)
    accumulators (float; double for double) for the partial tiles, empty
    when unsplit; the cpu's launchers take no workspace (an empty tuple).
    Its size is bounded by the rule: splits * B * upper tiles stays near
    SPLIT_TARGET_BLOCKS, so a few million elements at most."""
    B, C, L = features.shape
    tile = _split_tile(backend, features.dtype)
    if not tile:
        return 1, L, ()
    splits, slice_len = split_plan(B, C, L, tile)
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    shape = (splits, B, C, C) if splits > 1 else (0,)
    return splits, slice_len, (torch.empty(shape, dtype=acc, device=features.device),)


def _check_shape(t: Tensor, name: str, shape, op: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


@define_op("cnnk::gram_matrix", returns=Tensor, autocast=True)
def gram_matrix_op(features: Tensor, other: Optional[Tensor], scale: float,
                   backend: str) -> Launch:
    """scale * F F^T per image, or scale * (F O^T + O F^T) with ``other``."""
    op = "gram_matrix"
    g = _features(features, "features", op)
    if other is not None:
        _args.check_tensor(other, "other", ndim=3)
        _args.check_same(features, "features", {"other": other})
        _check_shape(other, "other", features.shape, op)
    gram = features.new_empty((g.B, g.C, g.C))

    def run(b: str) -> None:
        splits, slice_len, workspace = _split(b, features)
        _ext.launchers(b, features, _triton).gram_matrix(
            replace(g, splits=splits, slice_len=slice_len), features, other, float(scale), gram,
            *workspace, *_tf32_flag(b))

    return Launch(gram, {"features": features, "other": other, "gram": gram}, run,
                  g.index_extent(), empty_sum=g.L == 0)


@define_op("cnnk::gram_matrix_backward", returns=Tensor)
def gram_matrix_backward_op(grad_gram: Tensor, features: Tensor, scale: float,
                            backend: str) -> Launch:
    """scale * (dG + dG^T) F per image."""
    op = "gram_matrix_backward"
    g = _features(features, "features", op)
    _args.check_tensor(grad_gram, "grad_gram", ndim=3)
    _args.check_same(features, "features", {"grad_gram": grad_gram})
    _check_shape(grad_gram, "grad_gram", (g.B, g.C, g.C), op)
    grad_features = torch.empty_like(features, memory_format=torch.contiguous_format)
    return Launch(grad_features, {"grad_gram": grad_gram, "features": features,
                                  "grad_features": grad_features},
                  lambda b: _ext.launchers(b, features, _triton).gram_matrix_backward(
                      g, grad_gram, features, float(scale), grad_features, *_tf32_flag(b)),
                  g.index_extent())


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a + b


def _gram_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0], inputs[1])
    ctx.scale, ctx.backend = inputs[2], inputs[3]


def _gram_backward(ctx, grad_gram):
    features, other = ctx.saved_tensors
    if other is None:
        return gram_matrix_backward_op(grad_gram, features, ctx.scale, ctx.backend), None, \
            None, None
    grad_features = grad_other = None
    if ctx.needs_input_grad[0]:
        grad_features = gram_matrix_backward_op(grad_gram, other, ctx.scale, ctx.backend)
    if ctx.needs_input_grad[1]:
        grad_other = gram_matrix_backward_op(grad_gram, features, ctx.scale, ctx.backend)
    return grad_features, grad_other, None, None


def _gram_jvp(ctx, features_tangent, other_tangent, *_):
    features, other = ctx.saved_tensors
    if other is None:
        return gram_matrix_op(features_tangent, features, ctx.scale, ctx.backend)
    tangent = None
    if features_tangent is not None:
        tangent = gram_matrix_op(features_tangent, other, ctx.scale, ctx.backend)
    if other_tangent is not None:
        tangent = _add(tangent, gram_matrix_op(features, other_tangent, ctx.scale, ctx.backend))
    return tangent


gram_matrix_op.register_derivatives(setup_context=_gram_setup, backward=_gram_backward,
                                    jvp=_gram_jvp)


def _gram_backward_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0], inputs[1])
    ctx.scale, ctx.backend = inputs[2], inputs[3]


def _gram_double_backward(ctx, grad_grad_features):
    grad_gram, features = ctx.saved_tensors
    grad_of_grad_gram = grad_of_features = None
    if ctx.needs_input_grad[0]:
        grad_of_grad_gram = gram_matrix_op(grad_grad_features, features, ctx.scale, ctx.backend)
    if ctx.needs_input_grad[1]:
        grad_of_features = gram_matrix_backward_op(grad_gram, grad_grad_features, ctx.scale,
                                                   ctx.backend)
    return grad_of_grad_gram, grad_of_features, None, None


def _gram_backward_jvp(ctx, grad_gram_tangent, features_tangent, *_):
    grad_gram, features = ctx.saved_tensors
    tangent = None
    if grad_gram_tangent is not None:
        tangent = gram_matrix_backward_op(grad_gram_tangent, features, ctx.scale, ctx.backend)
    if features_tangent is not None:
        tangent = _add(tangent, gram_matrix_backward_op(grad_gram, features_tangent, ctx.scale,
                                                        ctx.backend))
    return tangent


gram_matrix_backward_op.register_derivatives(setup_context=_gram_backward_setup,
                                             backward=_gram_double_backward,
                                             jvp=_gram_backward_jvp)


@dataclass(frozen=True)
class DifferenceGeometry:
    """A sum over N elements in chunks of ``chunk`` (one partial each, added
    in order: the same chunking on every backend), field for field
    ``cnnk::DifferenceGeometry``."""

    N: int
    chunk: int

    def index_extent(self) -> int:
        return self.N + self.chunk


_CHUNK = 8192  # elements per partial sum


def _flat(t: Optional[Tensor], order) -> Optional[Tensor]:
    """t's elements as a 1-D view, in the memory order ``order`` (dimensions
    by decreasing stride) when t is dense in it, else a copy."""
    return None if t is None else t.permute(order).reshape(-1)


def _memory_order(t: Tensor) -> list[int]:
    """t's dimensions from the largest stride to the smallest: NCHW and
    channels_last tensors view flat in this order without a copy."""
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


def _same_operands(first: Tensor, named: dict, op: str) -> None:
    for name, t in named.items():
        if t is not None:
            _args.check_tensor(t, name, ndim=first.dim())
            _args.check_same(first, "the first operand", {name: t})
            _check_shape(t, name, first.shape, op)


@define_op("cnnk::difference_dot", returns=Tensor)
def difference_dot_op(u: Tensor, v: Optional[Tensor], a: Tensor, b: Optional[Tensor],
                      scale: float, backend: str) -> Launch:
    """scale * sum (u - v)(a - b) (a 0-d tensor); None operands are zeros."""
    if not isinstance(u, Tensor) or not u.dtype.is_floating_point:
        raise TypeError("difference_dot: u must be a floating-point tensor")
    _same_operands(u, {"v": v, "a": a, "b": b}, "difference_dot")
    order = _memory_order(u)
    flats = [_flat(t, order) for t in (u, v, a, b)]
    g = DifferenceGeometry(u.numel(), _CHUNK)
    out = u.new_empty(())
    partials = torch.empty(max(1, -(-g.N // g.chunk)), device=u.device,
                           dtype=torch.float64 if u.dtype == torch.float64 else torch.float32)
    return Launch(out, {"u": u, "v": v, "a": a, "b": b, "partials": partials, "out": out},
                  lambda bk: _ext.launchers(bk, u, _triton).difference_dot(
                      g, *flats, float(scale), partials, out.view(1)),
                  g.index_extent(), empty_sum=g.N == 0)


@define_op("cnnk::scaled_difference", returns=Tensor)
def scaled_difference_op(a: Tensor, b: Optional[Tensor], weight: Tensor, scale: float,
                         backend: str) -> Launch:
    """scale * weight * (a - b), weight a 0-d tensor; b None is zero."""
    if not isinstance(a, Tensor) or not a.dtype.is_floating_point:
        raise TypeError("scaled_difference: a must be a floating-point tensor")
    _same_operands(a, {"b": b}, "scaled_difference")
    _args.check_tensor(weight, "weight", ndim=0)
    _args.check_same(a, "a", {"weight": weight})
    out = torch.empty_like(a)  # dense, so it views flat in its memory order
    order = _memory_order(out)
    g = DifferenceGeometry(a.numel(), _CHUNK)
    flat_out = _flat(out, order)
    return Launch(out, {"a": a, "b": b, "weight": weight, "out": out},
                  lambda bk: _ext.launchers(bk, a, _triton).scaled_difference(
                      g, _flat(a, order), _flat(b, order), weight.view(1), float(scale),
                      flat_out),
                  g.index_extent())


def _dot_setup(ctx, inputs, output) -> None:
    save(ctx, *inputs[:4])
    ctx.scale, ctx.backend = inputs[4], inputs[5]


def _dot_backward(ctx, grad):
    """d/du = s g (a - b), d/dv its negative; d/da = s g (u - v), d/db its negative."""
    u, v, a, b = ctx.saved_tensors
    s, bk = ctx.scale, ctx.backend
    need = ctx.needs_input_grad
    return (scaled_difference_op(a, b, grad, s, bk) if need[0] else None,
            scaled_difference_op(a, b, grad, -s, bk) if need[1] else None,
            scaled_difference_op(u, v, grad, s, bk) if need[2] else None,
            scaled_difference_op(u, v, grad, -s, bk) if need[3] else None, None, None)


def _dot_of(first: Optional[Tensor], second: Optional[Tensor], a, b, scale, backend):
    """scale * sum (first - second)(a - b) for tangents that may be None."""
    if first is None and second is None:
        return None
    if first is None:
        return difference_dot_op(second, None, a, b, -scale, backend)
    return difference_dot_op(first, second, a, b, scale, backend)


def _dot_jvp(ctx, u_t, v_t, a_t, b_t, *_):
    u, v, a, b = ctx.saved_tensors
    return _add(_dot_of(u_t, v_t, a, b, ctx.scale, ctx.backend),
                _dot_of(a_t, b_t, u, v, ctx.scale, ctx.backend))


difference_dot_op.register_derivatives(setup_context=_dot_setup, backward=_dot_backward,
                                       jvp=_dot_jvp)


def _difference_setup(ctx, inputs, output) -> None:
    save(ctx, *inputs[:3])
    ctx.scale, ctx.backend = inputs[3], inputs[4]


def _difference_backward(ctx, grad):
    """d/da = s w grad, d/db its negative, d/dw = s sum grad (a - b)."""
    a, b, weight = ctx.saved_tensors
    s, bk = ctx.scale, ctx.backend
    need = ctx.needs_input_grad
    return (scaled_difference_op(grad, None, weight, s, bk) if need[0] else None,
            scaled_difference_op(grad, None, weight, -s, bk) if need[1] else None,
            difference_dot_op(grad, None, a, b, s, bk) if need[2] else None, None, None)


def _difference_jvp(ctx, a_t, b_t, weight_t, *_):
    a, b, weight = ctx.saved_tensors
    s, bk = ctx.scale, ctx.backend
    tangent = None
    if weight_t is not None:
        tangent = scaled_difference_op(a, b, weight_t, s, bk)
    if a_t is not None:
        tangent = _add(tangent, scaled_difference_op(a_t, b_t, weight, s, bk))
    elif b_t is not None:
        tangent = _add(tangent, scaled_difference_op(b_t, None, weight, -s, bk))
    return tangent


scaled_difference_op.register_derivatives(setup_context=_difference_setup,
                                          backward=_difference_backward, jvp=_difference_jvp)


STYLE_TILE = 32  # side of the style loss's partial-sum tiles, the same on every backend


@dataclass(frozen=True)
class StyleLossGeometry:
    """The fused style loss's sizes, field for field ``cnnk::StyleLossGeometry``:
    features (B, C, L), target and residual (B, C, C), one partial sum per
    ``tile`` x ``tile`` tile of each image's C x C matrix; the split of L as
    GramGeometry's."""

    B: int
    C: int
    L: int
    tile: int
    splits: int
    slice_len: int

    def tiles(self) -> int:
        return -(-self.C // self.tile)

    def index_extent(self) -> int:
        return max(self.B * self.tiles() ** 2, self.C * self.C, self.L)


@define_op("cnnk::style_loss", returns=tuple[Tensor, Tensor])
def style_loss_op(features: Tensor, target: Tensor, gram_scale: float, loss_scale: float,
                  keep_residual: bool, backend: str) -> Launch:
    """(loss, residual): loss = loss_scale * sum over images and (i, j) of
    (gram_scale * F F^T - target)^2, a 0-d tensor, the Gram never written;
    residual = gram_scale * F F^T - target, (B, C, C), when
    ``keep_residual`` (what the derivatives read), else an empty tensor."""
    op = "style_loss"
    g = _features(features, "features", op)
    _args.check_tensor(target, "target", ndim=3)
    _args.check_same(features, "features", {"target": target})
    _check_shape(target, "target", (g.B, g.C, g.C), op)
    sg = StyleLossGeometry(g.B, g.C, g.L, STYLE_TILE, 1, g.L)
    loss = features.new_empty(())
    residual = features.new_empty((g.B, g.C, g.C) if keep_residual else (0,))
    kept = residual if keep_residual else None
    partials = torch.empty(g.B * sg.tiles() ** 2, device=features.device,
                           dtype=torch.float64 if features.dtype == torch.float64
                           else torch.float32)

    def run(b: str) -> None:
        splits, slice_len, workspace = _split(b, features)
        _ext.launchers(b, features, _triton).style_loss(
            replace(sg, splits=splits, slice_len=slice_len), features, target,
            float(gram_scale), float(loss_scale), partials, kept, loss.view(1), *workspace,
            *_tf32_flag(b))

    return Launch((loss, residual), {"features": features, "target": target,
                                     "partials": partials, "residual": kept, "loss": loss},
                  run, sg.index_extent())


def _style_setup(ctx, inputs, outputs) -> None:
    features, _target, gram_scale, loss_scale, keep, backend = inputs
    if not keep:
        raise ValueError("style_loss is differentiated from its residual: call it with "
                         "keep_residual=True")
    save(ctx, features, outputs[1])
    ctx.gram_scale, ctx.loss_scale, ctx.backend = gram_scale, loss_scale, backend
    # An unused output's gradient arrives as None, not as zeros.
    ctx.set_materialize_grads(False)


def _style_backward(ctx, grad_loss, grad_residual):
    """With R = s F F^T - T and J = w sum R^2: dJ/dR = 2 w R, and R's own
    gradient adds to it; dF = s (dR + dR^T) F (the Gram's backward op),
    dT = -dR."""
    features, residual = ctx.saved_tensors
    need = ctx.needs_input_grad
    loss_grad = incoming_scalar(grad_loss)
    if grad_residual is None and not need[1] and loss_grad is not None:
        # On the cpu dR's scale is at hand: it goes into the Gram backward's,
        # sparing a pass over the C x C residual (and an op call).
        scale = ctx.gram_scale * 2 * ctx.loss_scale * loss_grad
        return (gram_matrix_backward_op(residual, features, scale, ctx.backend),
                None, None, None, None, None)
    grad_r = None
    if grad_loss is not None:
        grad_r = scaled_difference_op(residual, None, grad_loss, 2 * ctx.loss_scale, ctx.backend)
    grad_r = _add(grad_r, grad_residual)
    if grad_r is None:
        return None, None, None, None, None, None
    grad_features = (gram_matrix_backward_op(grad_r, features, ctx.gram_scale, ctx.backend)
                     if need[0] else None)
    return grad_features, -grad_r if need[1] else None, None, None, None, None


def _style_jvp(ctx, features_tangent, target_tangent, *_):
    """R' = s (F' F^T + F F'^T) - T' (the symmetrised product), J' = 2 w sum R R'."""
    features, residual = ctx.saved_tensors
    tangent = None
    if features_tangent is not None:
        tangent = gram_matrix_op(features_tangent, features, ctx.gram_scale, ctx.backend)
    if target_tangent is not None:
        tangent = -target_tangent if tangent is None else tangent - target_tangent
    if tangent is None:
        return None, None
    loss_tangent = difference_dot_op(residual, None, tangent, None, 2 * ctx.loss_scale,
                                     ctx.backend)
    return loss_tangent, tangent


style_loss_op.register_derivatives(setup_context=_style_setup, backward=_style_backward,
                                   jvp=_style_jvp)


def gram_scale(normalize: str, channels: int, positions: int) -> float:
    """The factor ``normalize`` applies to F F^T (see the module docstring)."""
    _backend.check_choice("normalize", normalize, NORMALIZATIONS)
    if positions == 0 or normalize == "none":
        return 1.0
    return 1.0 / (positions * (channels if normalize == "chw" else 1))


def flat_features(features: Tensor) -> Tensor:
    """(B, C, H, W) or (B, C, L) features as (B, C, L): a view for NCHW and
    channels_last alike (the plane's strides merge), a copy only for views
    whose plane does not."""
    _args.check_tensor(features, "features", ndim=(3, 4))
    return features.flatten(2) if features.dim() == 4 else features


def gram_matrix(features: Tensor, *, normalize: str = "none") -> Tensor:
    """Gram matrices of a batch of feature maps: (B, C, H, W) or (B, C, L)
    -> (B, C, C), G[b, k, k'] = sum_l F[b, k, l] F[b, k', l] / norm, with
    norm 1 (``normalize="none"``, the course's G), H * W (``"hw"``) or
    C * H * W (``"chw"``). Differentiable (twice), on the current backend."""
    flat = flat_features(features)
    scale = gram_scale(normalize, flat.shape[1], flat.shape[2])
    return gram_matrix_op(flat, None, scale, _backend.current_backend())


def content_loss(a_content: Tensor, a_generated: Tensor) -> Tensor:
    """The course's content cost, J = sum (a_C - a_G)^2 / (2 n_H n_W n_C),
    for (C, H, W) activations or a batch (B, C, H, W) of them (the sum of
    each image's cost); one fused pass (difference, square, sum), its
    gradient another."""
    _args.check_tensor(a_content, "a_content", ndim=(3, 4))
    _args.check_tensor(a_generated, "a_generated", ndim=(3, 4))
    if a_content.shape != a_generated.shape:
        raise ValueError(f"content_loss: a_content and a_generated must have the same shape, "
                         f"got {tuple(a_content.shape)} and {tuple(a_generated.shape)}")
    per_image = math.prod(a_content.shape[-3:])
    scale = 1.0 / (2 * per_image) if per_image else 1.0
    return difference_dot_op(a_content, a_generated, a_content, a_generated, scale,
                             _backend.current_backend())


def style_loss(features: Tensor, target_gram: Tensor, *, normalize: str = "course") -> Tensor:
    """The style cost of one layer against a target Gram matrix, (C, C) or
    (B, C, C), for (B, C, H, W) or (B, C, L) features:

    ``"course"`` (the default, the notes' J_style): with G the unnormalised
    Gram, sum (G - target)^2 / (2 n_H n_W n_C)^2 per image, summed over the
    batch; ``"tutorial"`` (PyTorch's style-transfer tutorial): with
    G = F F^T / (C H W), the mean of (G - target)^2 over the batch's
    B * C * C entries.

    One fused pass (the ``style_loss`` operator): the Gram's upper-triangle
    tiles, the squared difference and the sum; the generated Gram is never
    written. When derivatives will be taken the same pass writes the
    residual G - target that they read. Features and target of different
    dtypes compute in torch's promoted dtype."""
    _backend.check_choice("normalize", normalize, STYLE_NORMALIZATIONS)
    flat = flat_features(features)
    B, C, L = flat.shape
    _args.check_tensor(target_gram, "target_gram", ndim=(2, 3))
    expected = (C, C) if target_gram.dim() == 2 else (B, C, C)
    _check_shape(target_gram, "target_gram", expected, "style_loss")
    course = normalize == "course"
    gram_factor = 1.0 if course or L == 0 else 1.0 / (C * L)
    # An empty batch or plane sums nothing: 0 (torch's mean of nothing is NaN).
    loss_factor = 1.0 / max(1, (2 * C * L) ** 2 if course else B * C * C)
    # torch's promotion, for bfloat16 features against a float32 target, say.
    dtype = torch.promote_types(flat.dtype, target_gram.dtype)
    flat, target = flat.to(dtype), target_gram.to(dtype).expand(B, C, C)
    keep = derivatives_needed((flat, target))
    return style_loss_op(flat, target, gram_factor, loss_factor, keep,
                         _backend.current_backend())[0]
