"""gram, Gram matrices of feature maps: Triton kernels and their launchers
(``gram_matrix``, ``gram_matrix_backward``, named and called like the C++
and CUDA launchers; contracts in csrc/include/cnnk/gram.h).

Shapes: features x (B, C, L) (a (B, C, H, W) map flattened: NCHW gives
l stride 1, channels_last gives c stride 1, both without a copy), gram
(B, C, C). Every tensor is addressed through its three strides.

``_gram_kernel``: a program owns one BLOCK x BLOCK tile (rows i, columns j)
of one image's Gram and reduces over L, BLOCK_L positions per step, with
``tl.dot`` on tensor cores (fp16/bf16 with fp32 accumulation; fp32 as TF32
only when ``torch.backends.cuda.matmul.allow_tf32`` allows it, torch's rule
for bmm, exact fp32 otherwise). The grid is the full tile square; programs
below the diagonal return at once, so only the upper triangle is computed,
and each tile is stored twice: itself (where i <= j) and mirrored (where
i < j), so the result is exactly symmetric and every element written once.
CROSS: the symmetrised product x o^T + o x^T, two dots per step.
Cost: B * C * (C + BLOCK) * L multiply-adds (half a bmm's B * C^2 * L for
C >> BLOCK); bytes: x read once per tile row and column (L2 serves most),
the Gram written once. Compute-bound for C >= 128 on the GPU.

Split reduction over L (``_gram_slice_kernel`` + ``_gram_split_epilogue_kernel``
/ ``_style_split_epilogue_kernel``; contract in csrc/include/cnnk/gram.h):
when the upper tiles times the images are too few programs to fill the
GPU, the plan (cnnkernels.ops.gram.split_plan: splits = clamp(ceil(264 /
(B * upper tiles)), 1, L // 512), 264 a fixed target since the
interpreter has no device to ask) gives g.splits slices of g.slice_len
positions (whole 64-position steps). Phase 1, grid (tiles^2, images,
splits): a program reduces its slice of one upper SPLIT_TILE tile (image
pointers moved to the slice's first position, so the loop is the single
pass's) and stores it unscaled in ACC to the workspace (splits, B, C, C).
Phase 2, grid (tiles^2, images): a program adds its tile's slices in slice
order (deterministic, no atomics), then runs the single pass's epilogue:
the Gram's scaled, mirrored store, or the style loss's residual and tile
partial (then ``_sum_partials_kernel``). Both phases use the style loss's
32-wide tiles for every dtype (the Gram's 64-wide fp32 TF32 tile spilled
in phase 1; a split has programs to spare). Cost: the single pass's
multiply-adds; bytes: x as the single pass, the workspace written and read
once (4 * splits * B * C^2 each way, at most 2 C / 512 of x's bytes for
16-bit x). With g.splits == 1 the single-pass kernels run.

``_gram_backward_kernel``: grad_x = scale (dG + dG^T) x, a GEMM of M = C
rows, N = L columns, K = C: a program owns BLOCK_M x BLOCK_N of one image's
grad_x and reduces over k, BLOCK_K per step; the A tile dG[i, k] + dG[k, i]
is formed in fp32 from two loads (one transposed) and rounded once to the
input dtype for the dot. 2 * B * C^2 * L flops; x read C / BLOCK_M times
(from L2), grad_x written once.

``_style_loss_kernel`` + ``_sum_partials_kernel``: the fused style loss
(contract in csrc/include/cnnk/gram.h): a program owns one STYLE_TILE x
STYLE_TILE tile (ti <= tj) of one image's Gram, accumulates it with
``tl.dot`` as ``_gram_kernel`` does, and never stores it: the epilogue
subtracts the target tile and the mirrored target tile (target[j, i]: any
target, symmetric or not), squares, sums the upper elements (i <= j; the
mirrored term where i < j) to the tile's partial and, with KEEP, stores the
residual tile and its mirror. Programs below the diagonal write a zero
partial; one program then adds the B * tiles^2 partials in order. Cost: the
Gram's B * C * (C + tile) * L multiply-adds; bytes: x read once per tile
row and column, the target read once, the residual written once (if kept),
the Gram never.

``_difference_dot_kernel`` + ``_sum_partials_kernel``: the content loss's
scale * sum (u - v)(a - b); a program sums one chunk of g.chunk elements
(BLOCK lanes, a fixed order) to a partial, then one program adds the
partials in order (deterministic). ``_scaled_difference_kernel``:
scale * weight[0] * (a - b), elementwise. Memory-bound: every input read
once (4 operands x N elements at most), the output written once.

Limits: offsets are 32-bit (``cnnkernels._args.check_index_range``); the
batch is grid axis 1 (at most 65535 images per launch);
float16/bfloat16/float32 on the GPU, float32/float64 under
TRITON_INTERPRET=1 (fp64 accumulates in fp64 there).
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type

# Tiles by operand width: 16-bit operands take 64-wide tiles; fp32 ones
# (twice the registers per operand, and exact fp32 dots run on the CUDA
# cores, an accumulator per product) spilled at 64 x 64 with 4 warps, so
# they take 32-row tiles.
_FORWARD_TILES = {2: (64, 32), 4: (32, 32), 8: (32, 32)}  # element bytes -> BLOCK, BLOCK_L
_BACKWARD_TILES = {2: (64, 64, 32), 4: (32, 64, 32), 8: (32, 64, 32)}  # BLOCK_M, _N, _K
_NUM_WARPS = 4
_STYLE_TILE = 32  # the style loss's tile (cnnkernels.ops.gram.STYLE_TILE, for the static check)
# Positions per step of the style loss by element bytes: fp32 operands at
# 32 spilled 8 bytes on sm_80 under Triton 3.6 (the epilogue's target and
# residual tiles live beside them).
_STYLE_BLOCK_L = {2: 32, 4: 16, 8: 16}
# Triton 3.6's ptxas for sm_90a held the style loss to 96 registers and
# spilled 4 bytes (bf16, residual kept, since the split's shared epilogue);
# allowed 104 it uses 104, spill-free (the launch and the static check both
# pass the cap).
_STYLE_MAXNREG = 104
# The split forward's tiles (both phases, the Gram's and the style loss's):
# the style loss's, which compile without spills for every dtype; a split
# has blocks to spare, so the smaller tile costs no parallelism.
SPLIT_TILE = _STYLE_TILE
_SPLIT_BLOCK_L = _STYLE_BLOCK_L
_REDUCTION_BLOCK = 1024  # elements per step of the difference kernels
_MAX_BATCH = 65535  # grid axis 1


@triton.jit
def _tile_product(x_img, o_img, rows, cols, C, L, xs_c, xs_l, os_c, os_l,
                  CROSS: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    """The Gram tile (rows, cols) of one image's L positions (a slice: the
    images' pointers moved to its first position, L its length): x x^T, or
    with CROSS x o^T + o x^T, unscaled in ACC."""
    steps = tl.arange(0, BLOCK_L)
    acc = tl.zeros((BLOCK, BLOCK), dtype=ACC)
    for l0 in range(0, L, BLOCK_L):
        pos = l0 + steps
        a_mask = (rows[:, None] < C) & (pos[None, :] < L)
        b_mask = (pos[:, None] < L) & (cols[None, :] < C)
        a = tl.load(x_img + rows[:, None] * xs_c + pos[None, :] * xs_l, mask=a_mask, other=0.0)
        bt = tl.load(x_img + cols[None, :] * xs_c + pos[:, None] * xs_l, mask=b_mask, other=0.0)
        if CROSS:
            oa = tl.load(o_img + rows[:, None] * os_c + pos[None, :] * os_l, mask=a_mask,
                         other=0.0)
            ot = tl.load(o_img + cols[None, :] * os_c + pos[:, None] * os_l, mask=b_mask,
                         other=0.0)
            acc = tl.dot(a, ot, acc, input_precision=PRECISION, out_dtype=ACC)
            acc = tl.dot(oa, bt, acc, input_precision=PRECISION, out_dtype=ACC)
        else:
            acc = tl.dot(a, bt, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _store_gram_tile(g_img, value, rows, cols, C, gs_r, gs_c):
    """The Gram's store: the tile where i <= j and its mirror where i < j."""
    inside = (rows[:, None] < C) & (cols[None, :] < C)
    tl.store(g_img + rows[:, None] * gs_r + cols[None, :] * gs_c, value,
             mask=inside & (rows[:, None] <= cols[None, :]))
    tl.store(g_img + cols[None, :] * gs_r + rows[:, None] * gs_c, value,
             mask=inside & (rows[:, None] < cols[None, :]))


@triton.jit
def _program_tile(C, BLOCK: tl.constexpr):
    """This program's tile (axis 0 over tiles x tiles) of a C x C matrix:
    (ti, tj, its rows, its columns); the upper triangle's where tj >= ti."""
    tiles = tl.cdiv(C, BLOCK)
    ti = tl.program_id(0) // tiles
    tj = tl.program_id(0) % tiles
    return ti, tj, ti * BLOCK + tl.arange(0, BLOCK), tj * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _gram_kernel(x_ptr, o_ptr, g_ptr, C, L, xs_b, xs_c, xs_l, os_b, os_c, os_l,
                 gs_b, gs_r, gs_c, scale,
                 CROSS: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                 BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    ti, tj, rows, cols = _program_tile(C, BLOCK)
    if tj >= ti:
        b = tl.program_id(1)
        acc = _tile_product(x_ptr + b * xs_b, o_ptr + b * os_b, rows, cols, C, L, xs_c, xs_l,
                            os_c, os_l, CROSS, PRECISION, ACC, BLOCK, BLOCK_L)
        _store_gram_tile(g_ptr + b * gs_b, (acc * scale).to(g_ptr.dtype.element_ty), rows, cols,
                         C, gs_r, gs_c)


@triton.jit
def _gram_slice_kernel(x_ptr, o_ptr, w_ptr, C, L, slice_len, xs_b, xs_c, xs_l, os_b, os_c,
                       os_l, ws_s, ws_b,
                       CROSS: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    """Phase 1 of the split reduction: program (tile, image, slice) writes
    its slice's unscaled tile, every element inside C x C, to the workspace
    (upper tiles only; an image's C x C of a slice dense, row-major)."""
    ti, tj, rows, cols = _program_tile(C, BLOCK)
    if tj >= ti:
        b = tl.program_id(1)
        s = tl.program_id(2)
        l_begin = s * slice_len
        acc = _tile_product(x_ptr + b * xs_b + l_begin * xs_l, o_ptr + b * os_b + l_begin * os_l,
                            rows, cols, C, tl.minimum(slice_len, L - l_begin), xs_c, xs_l, os_c,
                            os_l, CROSS, PRECISION, ACC, BLOCK, BLOCK_L)
        tl.store(w_ptr + s * ws_s + b * ws_b + rows[:, None] * C + cols[None, :], acc,
                 mask=(rows[:, None] < C) & (cols[None, :] < C))


@triton.jit
def _sum_slices(w_img, rows, cols, C, splits, ws_s, ws_r, ws_c, ACC: tl.constexpr,
                BLOCK: tl.constexpr):
    """Phase 2's reduction: the tile's upper elements (i <= j) summed over
    the slices in slice order; the rest 0."""
    upper = (rows[:, None] < C) & (cols[None, :] < C) & (rows[:, None] <= cols[None, :])
    offsets = rows[:, None] * ws_r + cols[None, :] * ws_c
    acc = tl.zeros((BLOCK, BLOCK), dtype=ACC)
    for s in range(0, splits):
        acc += tl.load(w_img + s * ws_s + offsets, mask=upper, other=0.0)
    return acc


@triton.jit
def _gram_split_epilogue_kernel(w_ptr, g_ptr, C, splits, ws_s, ws_b, ws_r, ws_c, gs_b, gs_r,
                                gs_c, scale, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Phase 2 of the split Gram: program (tile, image) adds its tile's
    slices and stores as _gram_kernel."""
    ti, tj, rows, cols = _program_tile(C, BLOCK)
    if tj >= ti:
        b = tl.program_id(1)
        acc = _sum_slices(w_ptr + b * ws_b, rows, cols, C, splits, ws_s, ws_r, ws_c, ACC, BLOCK)
        _store_gram_tile(g_ptr + b * gs_b, (acc * scale).to(g_ptr.dtype.element_ty), rows, cols,
                         C, gs_r, gs_c)


@triton.jit
def _style_tile_epilogue(acc, t_img, r_img, partial, rows, cols, C, ts_r, ts_c, rs_r, rs_c,
                         gram_scale, KEEP: tl.constexpr, ACC: tl.constexpr):
    """The style loss's epilogue of one tile, the unscaled Gram tile acc
    never stored: the partial sum of its squared differences against the
    target (both triangles, cnnk/gram.h) and, with KEEP, the residual."""
    inside = (rows[:, None] < C) & (cols[None, :] < C)
    upper = inside & (rows[:, None] <= cols[None, :])
    lower = inside & (rows[:, None] < cols[None, :])
    # One triangle after the other (fewer live registers: fp32 with both
    # at once spilled on sm_90a).
    gram = acc * gram_scale
    target = tl.load(t_img + rows[:, None] * ts_r + cols[None, :] * ts_c, mask=upper,
                     other=0.0).to(ACC)
    d = tl.where(upper, gram - target, 0.0)
    total = tl.sum(tl.sum(d * d, axis=1), axis=0)
    if KEEP:
        tl.store(r_img + rows[:, None] * rs_r + cols[None, :] * rs_c,
                 d.to(r_img.dtype.element_ty), mask=upper)
    mirrored = tl.load(t_img + cols[None, :] * ts_r + rows[:, None] * ts_c, mask=lower,
                       other=0.0).to(ACC)
    d = tl.where(lower, gram - mirrored, 0.0)
    tl.store(partial, total + tl.sum(tl.sum(d * d, axis=1), axis=0))
    if KEEP:
        tl.store(r_img + cols[None, :] * rs_r + rows[:, None] * rs_c,
                 d.to(r_img.dtype.element_ty), mask=lower)


@triton.jit
def _style_tile(partial_ptr, C, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """The style loss's tile of this program (_program_tile), its image b
    (axis 1) and its partial sum's slot; a tile below the diagonal writes a
    zero partial there."""
    ti, tj, rows, cols = _program_tile(C, BLOCK)
    tiles = tl.cdiv(C, BLOCK)
    b = tl.program_id(1)
    partial = partial_ptr + b * tiles * tiles + tl.program_id(0)
    if tj < ti:
        tl.store(partial, tl.zeros((), dtype=ACC))
    return ti, tj, rows, cols, b, partial


@triton.jit
def _style_loss_kernel(x_ptr, t_ptr, r_ptr, partial_ptr, C, L, xs_b, xs_c, xs_l, ts_b, ts_r,
                       ts_c, rs_b, rs_r, rs_c, gram_scale,
                       KEEP: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    ti, tj, rows, cols, b, partial = _style_tile(partial_ptr, C, ACC, BLOCK)
    if tj >= ti:
        x_img = x_ptr + b * xs_b
        acc = _tile_product(x_img, x_img, rows, cols, C, L, xs_c, xs_l, xs_c, xs_l, False,
                            PRECISION, ACC, BLOCK, BLOCK_L)
        _style_tile_epilogue(acc, t_ptr + b * ts_b, r_ptr + b * rs_b, partial, rows, cols, C,
                             ts_r, ts_c, rs_r, rs_c, gram_scale, KEEP, ACC)


@triton.jit
def _style_split_epilogue_kernel(w_ptr, t_ptr, r_ptr, partial_ptr, C, splits, ws_s, ws_b, ws_r,
                                 ws_c, ts_b, ts_r, ts_c, rs_b, rs_r, rs_c, gram_scale,
                                 KEEP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Phase 2 of the split style loss: program (tile, image) adds its
    tile's slices, then the epilogue of _style_loss_kernel; tiles below the
    diagonal write a zero partial."""
    ti, tj, rows, cols, b, partial = _style_tile(partial_ptr, C, ACC, BLOCK)
    if tj >= ti:
        acc = _sum_slices(w_ptr + b * ws_b, rows, cols, C, splits, ws_s, ws_r, ws_c, ACC, BLOCK)
        _style_tile_epilogue(acc, t_ptr + b * ts_b, r_ptr + b * rs_b, partial, rows, cols, C,
                             ts_r, ts_c, rs_r, rs_c, gram_scale, KEEP, ACC)


@triton.jit
def _gram_backward_kernel(dg_ptr, x_ptr, gx_ptr, C, L, ds_b, ds_r, ds_c, xs_b, xs_c, xs_l,
                          gxs_b, gxs_c, gxs_l, scale,
                          PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    column_tiles = tl.cdiv(L, BLOCK_N)
    rows = (tl.program_id(0) // column_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tl.program_id(0) % column_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    b = tl.program_id(1)
    dg_img = dg_ptr + b * ds_b
    x_img = x_ptr + b * xs_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        s_mask = (rows[:, None] < C) & (k[None, :] < C)
        s = tl.load(dg_img + rows[:, None] * ds_r + k[None, :] * ds_c, mask=s_mask,
                    other=0.0).to(ACC)
        s += tl.load(dg_img + k[None, :] * ds_r + rows[:, None] * ds_c, mask=s_mask,
                     other=0.0).to(ACC)
        xt = tl.load(x_img + k[:, None] * xs_c + cols[None, :] * xs_l,
                     mask=(k[:, None] < C) & (cols[None, :] < L), other=0.0)
        acc = tl.dot(s.to(x_ptr.dtype.element_ty), xt, acc, input_precision=PRECISION,
                     out_dtype=ACC)
    tl.store(gx_ptr + b * gxs_b + rows[:, None] * gxs_c + cols[None, :] * gxs_l,
             (acc * scale).to(gx_ptr.dtype.element_ty),
             mask=(rows[:, None] < C) & (cols[None, :] < L))


@triton.jit
def _operand(ptr, offsets, mask, HAS: tl.constexpr, ACC: tl.constexpr):
    """An operand of the difference kernels, zero when absent."""
    if HAS:
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(ACC)
    return tl.zeros(offsets.shape, dtype=ACC)


@triton.jit
def _difference_dot_kernel(u_ptr, v_ptr, a_ptr, b_ptr, partial_ptr, N, us, vs, as_, bs,
                           HAS_V: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                           CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    lanes = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, CHUNK, BLOCK):
        i = chunk * CHUNK + start + tl.arange(0, BLOCK)
        mask = i < N
        d_uv = _operand(u_ptr, i * us, mask, True, ACC) - _operand(v_ptr, i * vs, mask, HAS_V, ACC)
        d_ab = _operand(a_ptr, i * as_, mask, True, ACC) - _operand(b_ptr, i * bs, mask, HAS_B,
                                                                    ACC)
        lanes += d_uv * d_ab
    tl.store(partial_ptr + chunk, tl.sum(lanes, axis=0))


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, count, scale, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    """One program: the partials in a fixed order, scaled, to the 0-d output."""
    lanes = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, count, BLOCK):
        i = start + tl.arange(0, BLOCK)
        lanes += tl.load(partial_ptr + i, mask=i < count, other=0.0)
    tl.store(out_ptr, (tl.sum(lanes, axis=0) * scale).to(out_ptr.dtype.element_ty))


@triton.jit
def _scaled_difference_kernel(a_ptr, b_ptr, w_ptr, out_ptr, N, as_, bs, outs, scale,
                              HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    factor = tl.load(w_ptr).to(ACC) * scale
    d = _operand(a_ptr, i * as_, mask, True, ACC) - _operand(b_ptr, i * bs, mask, HAS_B, ACC)
    tl.store(out_ptr + i * outs, (factor * d).to(out_ptr.dtype.element_ty), mask=mask)


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: TF32 for fp32 only when torch allows it for
    matmuls; fp16/bf16 run on tensor cores whatever it says."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    return "tf32" if dtype == torch.float32 and allowed else "ieee"


def _batches(batch: int):
    """Image ranges of at most _MAX_BATCH (grid axis 1's limit)."""
    for start in range(0, batch, _MAX_BATCH):
        yield start, min(batch, start + _MAX_BATCH)


def _slices(g, x, o, workspace, cross: bool) -> None:
    """Phase 1 of the split reduction: every upper SPLIT_TILE tile's
    g.splits slices into the workspace (splits, B, C, C)."""
    tiles = triton.cdiv(g.C, SPLIT_TILE)
    for start, end in _batches(g.B):
        _gram_slice_kernel[(tiles * tiles, end - start, g.splits)](
            x[start:end], o[start:end], workspace[:, start:end], g.C, g.L, g.slice_len,
            *x.stride(), *o.stride(), *workspace.stride()[:2], CROSS=cross,
            PRECISION=_precision(x.dtype), ACC=acc_type(x.dtype), BLOCK=SPLIT_TILE,
            BLOCK_L=_SPLIT_BLOCK_L[x.element_size()], num_warps=_NUM_WARPS)


def gram_matrix(g, x, other, scale: float, gram, workspace) -> None:
    """gram = scale * x x^T per image, or scale * (x o^T + o x^T) with
    ``other``; split over L in two phases when g.splits > 1 (``workspace``
    (splits, B, C, C) accumulators, else empty)."""
    cross = other is not None
    o = other if cross else x
    if g.splits > 1:
        _slices(g, x, o, workspace, cross)
        tiles = triton.cdiv(g.C, SPLIT_TILE)
        for start, end in _batches(g.B):
            _gram_split_epilogue_kernel[(tiles * tiles, end - start)](
                workspace[:, start:end], gram[start:end], g.C, g.splits, *workspace.stride(),
                *gram.stride(), scale, ACC=acc_type(x.dtype), BLOCK=SPLIT_TILE,
                num_warps=_NUM_WARPS)
        return
    block, block_l = _FORWARD_TILES[x.element_size()]
    tiles = triton.cdiv(g.C, block)
    for start, end in _batches(g.B):
        _gram_kernel[(tiles * tiles, end - start)](
            x[start:end], o[start:end], gram[start:end], g.C, g.L, *x.stride(), *o.stride(),
            *gram.stride(), scale, CROSS=cross, PRECISION=_precision(x.dtype),
            ACC=acc_type(x.dtype), BLOCK=block, BLOCK_L=block_l, num_warps=_NUM_WARPS)


def gram_matrix_backward(g, grad_gram, x, scale: float, grad_x) -> None:
    """grad_x = scale * (grad_gram + grad_gram^T) x per image."""
    block_m, block_n, block_k = _BACKWARD_TILES[x.element_size()]
    grid = triton.cdiv(g.C, block_m) * triton.cdiv(g.L, block_n)
    for start, end in _batches(g.B):
        _gram_backward_kernel[(grid, end - start)](
            grad_gram[start:end], x[start:end], grad_x[start:end], g.C, g.L,
            *grad_gram.stride(), *x.stride(), *grad_x.stride(), scale,
            PRECISION=_precision(x.dtype), ACC=acc_type(x.dtype), BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=_NUM_WARPS)


def style_loss(g, x, target, gram_scale: float, loss_scale: float, partials, residual,
               out, workspace) -> None:
    """out[0] = loss_scale * sum (gram_scale * x x^T - target)^2 over every
    image, a partial per tile then their sum; the residual if given. Split
    over L in two phases when g.splits > 1, as gram_matrix."""
    keep = residual is not None
    r = residual if keep else target
    tiles = triton.cdiv(g.C, g.tile)
    if g.splits > 1:
        _slices(g, x, x, workspace, False)
    for start, end in _batches(g.B):
        if g.splits > 1:
            _style_split_epilogue_kernel[(tiles * tiles, end - start)](
                workspace[:, start:end], target[start:end], r[start:end],
                partials[start * tiles * tiles:], g.C, g.splits, *workspace.stride(),
                *target.stride(), *r.stride(), gram_scale, KEEP=keep, ACC=acc_type(x.dtype),
                BLOCK=g.tile, num_warps=_NUM_WARPS)
            continue
        _style_loss_kernel[(tiles * tiles, end - start)](
            x[start:end], target[start:end], r[start:end], partials[start * tiles * tiles:],
            g.C, g.L, *x.stride(), *target.stride(), *r.stride(), gram_scale, KEEP=keep,
            PRECISION=_precision(x.dtype), ACC=acc_type(x.dtype), BLOCK=g.tile,
            BLOCK_L=_STYLE_BLOCK_L[x.element_size()], num_warps=_NUM_WARPS,
            maxnreg=_STYLE_MAXNREG)
    _sum_partials_kernel[(1,)](partials, out, g.B * tiles * tiles, loss_scale,
                               ACC=acc_type(x.dtype), BLOCK=_REDUCTION_BLOCK,
                               num_warps=_NUM_WARPS)


def difference_dot(g, u, v, a, b, scale: float, partials, out) -> None:
    """out[0] = scale * sum (u - v)(a - b): a partial per chunk, then their sum."""
    chunks = triton.cdiv(g.N, g.chunk)
    _difference_dot_kernel[(chunks,)](
        u, v if v is not None else u, a, b if b is not None else a, partials, g.N, u.stride(0),
        v.stride(0) if v is not None else 0, a.stride(0), b.stride(0) if b is not None else 0,
        HAS_V=v is not None, HAS_B=b is not None, ACC=acc_type(u.dtype), CHUNK=g.chunk,
        BLOCK=_REDUCTION_BLOCK, num_warps=_NUM_WARPS)
    _sum_partials_kernel[(1,)](partials, out, chunks, scale, ACC=acc_type(u.dtype),
                               BLOCK=_REDUCTION_BLOCK, num_warps=_NUM_WARPS)


def scaled_difference(g, a, b, weight, scale: float, out) -> None:
    """out = scale * weight[0] * (a - b)."""
    _scaled_difference_kernel[(triton.cdiv(g.N, _REDUCTION_BLOCK),)](
        a, b if b is not None else a, weight, out, g.N, a.stride(0),
        b.stride(0) if b is not None else 0, out.stride(0), scale, HAS_B=b is not None,
        ACC=acc_type(a.dtype), BLOCK=_REDUCTION_BLOCK, num_warps=_NUM_WARPS)


def static_check_specs():
    """Every kernel in every launch configuration (dtype x variant x
    precision), for the static GPU check; each runs its dots on tensor cores
    except exact fp32."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        width = getattr(torch, dtype).itemsize
        block, block_l = _FORWARD_TILES[width]
        block_m, block_n, block_k = _BACKWARD_TILES[width]
        precisions = ("tf32", "ieee") if dtype == "float32" else ("ieee",)
        for precision in precisions:
            tensor_cores = precision == "tf32" or dtype != "float32"
            for cross in (False, True):
                specs.append(compile_spec(
                    f"gram_forward[{dtype},{precision},CROSS={cross}]", _gram_kernel,
                    pointers={"x_ptr": ptr, "o_ptr": ptr, "g_ptr": ptr, "scale": "fp32"},
                    constexprs={"CROSS": cross, "PRECISION": precision, "ACC": tl.float32,
                                "BLOCK": block, "BLOCK_L": block_l},
                    num_warps=_NUM_WARPS, tensor_cores=tensor_cores))
                specs.append(compile_spec(
                    f"gram_slice[{dtype},{precision},CROSS={cross}]", _gram_slice_kernel,
                    pointers={"x_ptr": ptr, "o_ptr": ptr, "w_ptr": "*fp32"},
                    constexprs={"CROSS": cross, "PRECISION": precision, "ACC": tl.float32,
                                "BLOCK": SPLIT_TILE, "BLOCK_L": _SPLIT_BLOCK_L[width]},
                    num_warps=_NUM_WARPS, tensor_cores=tensor_cores))
            for keep in (False, True):
                specs.append(compile_spec(
                    f"gram_style_loss[{dtype},{precision},KEEP={keep}]", _style_loss_kernel,
                    pointers={"x_ptr": ptr, "t_ptr": ptr, "r_ptr": ptr, "partial_ptr": "*fp32",
                              "gram_scale": "fp32"},
                    constexprs={"KEEP": keep, "PRECISION": precision, "ACC": tl.float32,
                                "BLOCK": _STYLE_TILE, "BLOCK_L": _STYLE_BLOCK_L[width]},
                    num_warps=_NUM_WARPS, maxnreg=_STYLE_MAXNREG, tensor_cores=tensor_cores))
            specs.append(compile_spec(
                f"gram_backward[{dtype},{precision}]", _gram_backward_kernel,
                pointers={"dg_ptr": ptr, "x_ptr": ptr, "gx_ptr": ptr, "scale": "fp32"},
                constexprs={"PRECISION": precision, "ACC": tl.float32, "BLOCK_M": block_m,
                            "BLOCK_N": block_n, "BLOCK_K": block_k},
                num_warps=_NUM_WARPS, tensor_cores=tensor_cores))
        specs.append(compile_spec(
            f"gram_split_epilogue[{dtype}]", _gram_split_epilogue_kernel,
            pointers={"w_ptr": "*fp32", "g_ptr": ptr, "scale": "fp32"},
            constexprs={"ACC": tl.float32, "BLOCK": SPLIT_TILE}, num_warps=_NUM_WARPS))
        for keep in (False, True):
            specs.append(compile_spec(
                f"gram_style_split_epilogue[{dtype},KEEP={keep}]", _style_split_epilogue_kernel,
                pointers={"w_ptr": "*fp32", "t_ptr": ptr, "r_ptr": ptr, "partial_ptr": "*fp32",
                          "gram_scale": "fp32"},
                constexprs={"KEEP": keep, "ACC": tl.float32, "BLOCK": SPLIT_TILE},
                num_warps=_NUM_WARPS))
        for has_second in (False, True):
            for has_b in (False, True):
                specs.append(compile_spec(
                    f"gram_difference_dot[{dtype},V={has_second},B={has_b}]",
                    _difference_dot_kernel,
                    pointers={"u_ptr": ptr, "v_ptr": ptr, "a_ptr": ptr, "b_ptr": ptr,
                              "partial_ptr": "*fp32"},
                    constexprs={"HAS_V": has_second, "HAS_B": has_b, "ACC": tl.float32,
                                "CHUNK": 8192, "BLOCK": _REDUCTION_BLOCK},
                    num_warps=_NUM_WARPS))
            specs.append(compile_spec(
                f"gram_scaled_difference[{dtype},B={has_second}]", _scaled_difference_kernel,
                pointers={"a_ptr": ptr, "b_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr,
                          "scale": "fp32"},
                constexprs={"HAS_B": has_second, "ACC": tl.float32, "BLOCK": _REDUCTION_BLOCK},
                num_warps=_NUM_WARPS))
        specs.append(compile_spec(
            f"gram_sum_partials[{dtype}]", _sum_partials_kernel,
            pointers={"partial_ptr": "*fp32", "out_ptr": ptr, "scale": "fp32"},
            constexprs={"ACC": tl.float32, "BLOCK": _REDUCTION_BLOCK}, num_warps=_NUM_WARPS))
    return specs
