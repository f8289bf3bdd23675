"""metric, the losses of metric learning: Triton kernels and their
launchers (``triplet_loss_forward``, ``triplet_loss_backward``,
``route_rows``, ``distance_matrix_forward``, ``distance_matrix_backward``,
``batch_hard_mining``, named and called like the C++ and CUDA launchers;
contracts in csrc/include/cnnk/metric.h).

Layout: embeddings are rows of D values, contiguous along D, rows at any
stride (0 for a broadcast row); indices int64.

``_triplet_forward_kernel``: a program owns g.chunk (BLOCK_N) triplets and
sums each row over D, BLOCK_D values per step (the positive and negative
rows gathered through the indices when INDEXED), then the distances, the
hinge and either the losses or the program's partial sum;
``_finish_kernel`` (one program) adds the partials in order and divides
for the mean. ``_triplet_backward_kernel`` re-reads the rows (first pass:
sums), then writes the three gradient rows (second pass). Memory-bound:
3 N D elements read by the forward, 6 N D read and 3 N D written by the
backward.

``_route_rows_kernel``: a program owns BLOCK_R output rows x BLOCK_D
columns and runs over the N source rows BLOCK_I at a time: the 0/1 match
matrix (index[i] == r) times the rows' tile (tl.dot, exact: one product
per match), so each output sums its rows in a fixed order without
atomics. N M D multiply-adds (the matches are sparse, the product is not:
the price of determinism without a sort).

``_distance_matrix_kernel``: a BLOCK x BLOCK tile of the (N, M) matrix by
direct differences over D, BLOCK_K at a time: 3 N M D flops on the CUDA
cores, exact at zero distance (cosine: the tile's dot products and its
rows' squared norms, 2 N M D flops). ``_distance_matrix_backward_kernel``:
grad_x[i] = (sum_j w_ij) x_i - sum_j w_ij y_j with w = grad / d (0 at
d = 0) or 2 grad, the second sum a tl.dot; grad_y is the same kernel with
the roles and the matrices' strides swapped. 2 N M D flops each. Cosine:
the coefficients from cnnk::cosine_slope_of_norms (the cosine 1 - d read
from the distances), the norms of the program's own rows and of every
other row recomputed in each program: (N / BLOCK) (D / BLOCK) M D more
reads for grad_x (D / BLOCK times the product's own; fine at the
embedding sizes metric learning uses, 128: 4x).

``_mining_kernel``: a program owns BLOCK rows of the distance matrix and
runs over its columns BLOCK at a time, keeping the largest same-label and
smallest other-label distance (strict comparisons and the lowest index
within a block: ties go to the lowest index; NaN never chosen).

Limits: 32-bit offsets (``cnnkernels._args.check_index_range``);
float16/bfloat16/float32 on the GPU (fp32 accumulation), float32/float64
under TRITON_INTERPRET=1.
"""

import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type

# cnnk::PairForm's codes (csrc/include/cnnk/metric.h).
NORM2 = tl.constexpr(0)
NORM1 = tl.constexpr(1)
NORMP = tl.constexpr(2)
SQUARED = tl.constexpr(3)
COSINE = tl.constexpr(4)
_FORMS = {"norm2": 0, "norm1": 1, "normp": 2, "squared": 3, "cosine": 4}
_EUCLIDEAN, _SQEUCLIDEAN, _COSINE = 0, 1, 2  # cnnk::Distance
# The distance-matrix kernels' DISTANCE (cnnk::Distance) codes they branch on.
SQEUCLIDEAN_DISTANCE = tl.constexpr(_SQEUCLIDEAN)
COSINE_DISTANCE = tl.constexpr(_COSINE)
_DISTANCE_NAMES = {"euclidean": _EUCLIDEAN, "sqeuclidean": _SQEUCLIDEAN, "cosine": _COSINE}
_MEAN = 1  # cnnk::Reduction

_BLOCK_N = 8  # triplets per program: g.chunk (cnnkernels.ops.metric._CHUNK)
# Embedding values per step of the triplet kernels (8 x 64 tiles: Triton 3.6 spilled 4 bytes
# in the general p-norm's forward).
_BLOCK_D = 32
_BLOCK = 32  # distance-matrix and mining tiles
_BLOCK_K = 8  # differences per step of the distance matrix
_ROUTE_TILES = (32, 32, 32)  # BLOCK_R, BLOCK_I, BLOCK_D
_REDUCTION_BLOCK = 1024
_NUM_WARPS = 4


def _pair_form(distance: int, p: float) -> int:
    if distance == _SQEUCLIDEAN:
        return _FORMS["squared"]
    if distance == _COSINE:
        return _FORMS["cosine"]
    return _FORMS["norm2"] if p == 2 else _FORMS["norm1"] if p == 1 else _FORMS["normp"]


@triton.jit
def _power(v, e):
    """v^e for v >= 0 (0 at 0)."""
    return tl.where(v == 0, 0.0, tl.exp2(e * tl.log2(tl.where(v == 0, 1.0, v))))


@triton.jit
def _term(u, power, FORM: tl.constexpr):
    """A difference's term of a distance's sum (cnnk::distance_term)."""
    if FORM == NORM1:
        t = tl.abs(u)
    elif FORM == NORMP:
        t = _power(tl.abs(u), power)
    else:
        t = u * u
    return t


@triton.jit
def _distance_of_sum(s, power, FORM: tl.constexpr):
    if FORM == NORM2:
        d = tl.sqrt(s)
    elif FORM == NORMP:
        d = _power(s, 1.0 / power)
    else:
        d = s
    return d


@triton.jit
def _clamped(norm, eps):
    return tl.where(norm > eps, norm, eps)


@triton.jit
def _cosine_distance(dot, xx, yy, eps):
    return 1.0 - dot / (_clamped(tl.sqrt(xx), eps) * _clamped(tl.sqrt(yy), eps))


@triton.jit
def _pair_scale(c, d, FORM: tl.constexpr):
    """cnnk::pair_scale."""
    if FORM == NORM2:
        w = tl.where(d == 0, 0.0, c / tl.where(d == 0, 1.0, d))
    elif FORM == SQUARED:
        w = 2.0 * c
    else:
        w = c
    return w


@triton.jit
def _pair_slope(u, scale, d, power, FORM: tl.constexpr):
    """cnnk::pair_slope: scale (c / d, 2 c or c) times d's derivative along u."""
    sign = tl.where(u > 0, 1.0, tl.where(u < 0, -1.0, 0.0))
    if FORM == NORM1:
        s = scale * sign
    elif FORM == NORMP:
        ratio = tl.abs(u) / tl.where(d == 0, 1.0, d)
        s = tl.where((u == 0) | (d == 0), 0.0, scale * sign * _power(ratio, power - 1.0))
    else:
        s = scale * u
    return s


@triton.jit
def _cosine_slope_of_norms(c, cosine, nx, ny, eps):
    """cnnk::cosine_slope_of_norms: (alpha_x, alpha_y, beta) from the
    (clamped) cosine and the norms."""
    mx = tl.where(nx >= eps, nx, eps)
    my = tl.where(ny >= eps, ny, eps)
    alpha_x = tl.where(nx >= eps, c * cosine / (mx * tl.where(nx == 0, 1.0, nx)), 0.0)
    alpha_y = tl.where(ny >= eps, c * cosine / (my * tl.where(ny == 0, 1.0, ny)), 0.0)
    return alpha_x, alpha_y, -c / (mx * my)


@triton.jit
def _cosine_slope(c, dot, xx, yy, eps):
    """cnnk::cosine_slope: (alpha_x, alpha_y, beta)."""
    nx = tl.sqrt(xx)
    ny = tl.sqrt(yy)
    cosine = dot / (tl.where(nx >= eps, nx, eps) * tl.where(ny >= eps, ny, eps))
    return _cosine_slope_of_norms(c, cosine, nx, ny, eps)


@triton.jit
def _triplet_row(d_ap, d_an, d_pn, margin, grad, SWAP: tl.constexpr):
    """cnnk::triplet_row: (loss, c_ap, c_an, c_pn)."""
    d_neg = tl.where(d_pn < d_an, d_pn, d_an) if SWAP else d_an
    z = margin + d_ap - d_neg
    loss = tl.where(z < 0, 0.0, z)
    active = z >= 0
    c_ap = tl.where(active, grad, 0.0)
    if SWAP:
        share_an = tl.where(d_an < d_pn, 1.0, tl.where(d_pn < d_an, 0.0, 0.5))
        c_an = -c_ap * share_an
        c_pn = -c_ap * (1.0 - share_an)
    else:
        c_an = -c_ap
        c_pn = tl.zeros_like(c_ap)
    return loss, c_ap, c_an, c_pn


@triton.jit
def _triplet_rows(rows, in_rows, pi_ptr, ni_ptr, pis, nis, INDEXED: tl.constexpr):
    """The positive and negative row of each triplet and whether it counts."""
    if INDEXED:
        prow = tl.load(pi_ptr + rows * pis, mask=in_rows, other=-1)
        nrow = tl.load(ni_ptr + rows * nis, mask=in_rows, other=-1)
        valid = in_rows & (prow >= 0) & (nrow >= 0)
        prow = tl.where(valid, prow, 0)
        nrow = tl.where(valid, nrow, 0)
    else:
        prow = rows
        nrow = rows
        valid = in_rows
    return prow, nrow, valid


@triton.jit
def _row_sums(a_ptr, p_ptr, n_ptr, rows, prow, nrow, valid, D, as_, ps, ns, offset, power,
              FORM: tl.constexpr, SWAP: tl.constexpr, ACC: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per triplet: the three pairs' sums (dot products for cosine) and, for
    cosine, the squared norms."""
    s_ap = tl.zeros((BLOCK_N,), dtype=ACC)
    s_an = tl.zeros((BLOCK_N,), dtype=ACC)
    s_pn = tl.zeros((BLOCK_N,), dtype=ACC)
    s_aa = tl.zeros((BLOCK_N,), dtype=ACC)
    s_pp = tl.zeros((BLOCK_N,), dtype=ACC)
    s_nn = tl.zeros((BLOCK_N,), dtype=ACC)
    for k0 in range(0, D, BLOCK_D):
        k = k0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (k[None, :] < D)
        x = tl.load(a_ptr + rows[:, None] * as_ + k[None, :], mask=mask, other=0.0).to(ACC)
        y = tl.load(p_ptr + prow[:, None] * ps + k[None, :], mask=mask, other=0.0).to(ACC)
        z = tl.load(n_ptr + nrow[:, None] * ns + k[None, :], mask=mask, other=0.0).to(ACC)
        if FORM == COSINE:
            s_ap += tl.sum(x * y, axis=1)
            s_an += tl.sum(x * z, axis=1)
            s_pn += tl.sum(y * z, axis=1)
            s_aa += tl.sum(x * x, axis=1)
            s_pp += tl.sum(y * y, axis=1)
            s_nn += tl.sum(z * z, axis=1)
        else:
            s_ap += tl.sum(tl.where(mask, _term(x - y + offset, power, FORM), 0.0), axis=1)
            s_an += tl.sum(tl.where(mask, _term(x - z + offset, power, FORM), 0.0), axis=1)
            if SWAP:
                s_pn += tl.sum(tl.where(mask, _term(y - z + offset, power, FORM), 0.0), axis=1)
    return s_ap, s_an, s_pn, s_aa, s_pp, s_nn


@triton.jit
def _distances(s_ap, s_an, s_pn, s_aa, s_pp, s_nn, power, eps, FORM: tl.constexpr):
    if FORM == COSINE:
        d_ap = _cosine_distance(s_ap, s_aa, s_pp, eps)
        d_an = _cosine_distance(s_an, s_aa, s_nn, eps)
        d_pn = _cosine_distance(s_pn, s_pp, s_nn, eps)
    else:
        d_ap = _distance_of_sum(s_ap, power, FORM)
        d_an = _distance_of_sum(s_an, power, FORM)
        d_pn = _distance_of_sum(s_pn, power, FORM)
    return d_ap, d_an, d_pn


@triton.jit
def _triplet_forward_kernel(a_ptr, p_ptr, n_ptr, pi_ptr, ni_ptr, partial_ptr, loss_ptr, N, D,
                            as_, ps, ns, pis, nis, ls, power, offset, eps, margin,
                            FORM: tl.constexpr, SWAP: tl.constexpr, INDEXED: tl.constexpr,
                            REDUCED: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_rows = rows < N
    prow, nrow, valid = _triplet_rows(rows, in_rows, pi_ptr, ni_ptr, pis, nis, INDEXED)
    s_ap, s_an, s_pn, s_aa, s_pp, s_nn = _row_sums(
        a_ptr, p_ptr, n_ptr, rows, prow, nrow, valid, D, as_, ps, ns, offset, power, FORM, SWAP,
        ACC, BLOCK_N, BLOCK_D)
    d_ap, d_an, d_pn = _distances(s_ap, s_an, s_pn, s_aa, s_pp, s_nn, power, eps, FORM)
    loss, _, _, _ = _triplet_row(d_ap, d_an, d_pn, margin, tl.zeros_like(d_ap), SWAP)
    loss = tl.where(valid, loss, 0.0)
    if REDUCED:
        tl.store(partial_ptr + tl.program_id(0), tl.sum(loss, axis=0))
    else:
        tl.store(loss_ptr + rows * ls, loss.to(loss_ptr.dtype.element_ty), mask=in_rows)


@triton.jit
def _divisor(N, pi_ptr, ni_ptr, pis, nis, INDEXED: tl.constexpr, BLOCK: tl.constexpr):
    """The mean's divisor: N, or the triplets included (at least 1)."""
    if INDEXED:
        count = tl.zeros((BLOCK,), dtype=tl.int32)
        for start in range(0, N, BLOCK):
            i = start + tl.arange(0, BLOCK)
            inside = i < N
            p = tl.load(pi_ptr + i * pis, mask=inside, other=-1)
            n = tl.load(ni_ptr + i * nis, mask=inside, other=-1)
            count += ((p >= 0) & (n >= 0)).to(tl.int32)
        divisor = tl.maximum(tl.sum(count, axis=0), 1).to(tl.float32)
    else:
        divisor = N.to(tl.float32)
    return divisor


@triton.jit
def _finish_kernel(partial_ptr, out_ptr, count, N, pi_ptr, ni_ptr, pis, nis,
                   MEAN: tl.constexpr, INDEXED: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    """One program: the partials in a fixed order (then the mean's division)."""
    lanes = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, count, BLOCK):
        i = start + tl.arange(0, BLOCK)
        lanes += tl.load(partial_ptr + i, mask=i < count, other=0.0)
    total = tl.sum(lanes, axis=0)
    if MEAN:
        total = total / _divisor(N, pi_ptr, ni_ptr, pis, nis, INDEXED, BLOCK).to(ACC)
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _triplet_backward_kernel(g_ptr, a_ptr, p_ptr, n_ptr, pi_ptr, ni_ptr, ga_ptr, gp_ptr, gn_ptr,
                             N, D, gs, as_, ps, ns, pis, nis, gas, gps, gns, power, offset, eps,
                             margin, FORM: tl.constexpr, SWAP: tl.constexpr,
                             INDEXED: tl.constexpr, MEAN: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_rows = rows < N
    prow, nrow, valid = _triplet_rows(rows, in_rows, pi_ptr, ni_ptr, pis, nis, INDEXED)
    s_ap, s_an, s_pn, s_aa, s_pp, s_nn = _row_sums(
        a_ptr, p_ptr, n_ptr, rows, prow, nrow, valid, D, as_, ps, ns, offset, power, FORM, SWAP,
        ACC, BLOCK_N, BLOCK_D)
    d_ap, d_an, d_pn = _distances(s_ap, s_an, s_pn, s_aa, s_pp, s_nn, power, eps, FORM)
    grad = tl.load(g_ptr + rows * gs, mask=in_rows, other=0.0).to(ACC)
    if MEAN:
        grad = grad / _divisor(N, pi_ptr, ni_ptr, pis, nis, INDEXED, 1024).to(ACC)
    grad = tl.where(valid, grad, 0.0)
    _, c_ap, c_an, c_pn = _triplet_row(d_ap, d_an, d_pn, margin, grad, SWAP)
    if FORM == COSINE:
        ax_ap, ay_ap, b_ap = _cosine_slope(c_ap, s_ap, s_aa, s_pp, eps)
        ax_an, ay_an, b_an = _cosine_slope(c_an, s_an, s_aa, s_nn, eps)
        ax_pn, ay_pn, b_pn = _cosine_slope(c_pn, s_pn, s_pp, s_nn, eps)
    else:
        w_ap = _pair_scale(c_ap, d_ap, FORM)
        w_an = _pair_scale(c_an, d_an, FORM)
        w_pn = _pair_scale(c_pn, d_pn, FORM)
    for k0 in range(0, D, BLOCK_D):
        k = k0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (k[None, :] < D)
        x = tl.load(a_ptr + rows[:, None] * as_ + k[None, :], mask=mask, other=0.0).to(ACC)
        y = tl.load(p_ptr + prow[:, None] * ps + k[None, :], mask=mask, other=0.0).to(ACC)
        z = tl.load(n_ptr + nrow[:, None] * ns + k[None, :], mask=mask, other=0.0).to(ACC)
        if FORM == COSINE:
            ga = (ax_ap + ax_an)[:, None] * x + b_ap[:, None] * y + b_an[:, None] * z
            gp = (ay_ap + ax_pn)[:, None] * y + b_ap[:, None] * x + b_pn[:, None] * z
            gn = (ay_an + ay_pn)[:, None] * z + b_an[:, None] * x + b_pn[:, None] * y
        else:
            s_ap_k = _pair_slope(x - y + offset, w_ap[:, None], d_ap[:, None], power, FORM)
            s_an_k = _pair_slope(x - z + offset, w_an[:, None], d_an[:, None], power, FORM)
            if SWAP:
                s_pn_k = _pair_slope(y - z + offset, w_pn[:, None], d_pn[:, None], power, FORM)
            else:
                s_pn_k = tl.zeros_like(s_ap_k)
            ga = s_ap_k + s_an_k
            gp = s_pn_k - s_ap_k
            gn = -s_an_k - s_pn_k
        out = in_rows[:, None] & (k[None, :] < D)
        ga = tl.where(mask, ga, 0.0)
        gp = tl.where(mask, gp, 0.0)
        gn = tl.where(mask, gn, 0.0)
        tl.store(ga_ptr + rows[:, None] * gas + k[None, :], ga.to(ga_ptr.dtype.element_ty),
                 mask=out)
        tl.store(gp_ptr + rows[:, None] * gps + k[None, :], gp.to(gp_ptr.dtype.element_ty),
                 mask=out)
        tl.store(gn_ptr + rows[:, None] * gns + k[None, :], gn.to(gn_ptr.dtype.element_ty),
                 mask=out)


@triton.jit
def _route_rows_kernel(rows_ptr, index_ptr, out_ptr, N, M, D, rs, xs, os_,
                       ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    d_tiles = tl.cdiv(D, BLOCK_D)
    r = (tl.program_id(0) // d_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = (tl.program_id(0) % d_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=ACC)
    for i0 in range(0, N, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        index = tl.load(index_ptr + i * xs, mask=i < N, other=-1)
        match = (index[None, :] == r[:, None]).to(ACC)
        tile = tl.load(rows_ptr + i[:, None] * rs + k[None, :],
                       mask=(i[:, None] < N) & (k[None, :] < D), other=0.0).to(ACC)
        acc = tl.dot(match, tile, acc, input_precision="ieee", out_dtype=ACC)
    tl.store(out_ptr + r[:, None] * os_ + k[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(r[:, None] < M) & (k[None, :] < D))


@triton.jit
def _distance_matrix_kernel(x_ptr, y_ptr, out_ptr, N, M, D, xs, ys, os_r, os_c, eps,
                            DISTANCE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    tiles = tl.cdiv(M, BLOCK)
    i = (tl.program_id(0) // tiles) * BLOCK + tl.arange(0, BLOCK)
    j = (tl.program_id(0) % tiles) * BLOCK + tl.arange(0, BLOCK)
    # Squared differences, or dot products and the rows' squared norms (cosine).
    acc = tl.zeros((BLOCK, BLOCK), dtype=ACC)
    xx = tl.zeros((BLOCK,), dtype=ACC)
    yy = tl.zeros((BLOCK,), dtype=ACC)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + i[:, None] * xs + k[None, :], mask=(i[:, None] < N) & (k[None, :] < D),
                    other=0.0).to(ACC)
        y = tl.load(y_ptr + j[:, None] * ys + k[None, :], mask=(j[:, None] < M) & (k[None, :] < D),
                    other=0.0).to(ACC)
        if DISTANCE == COSINE_DISTANCE:
            acc += tl.sum(x[:, None, :] * y[None, :, :], axis=2)
            xx += tl.sum(x * x, axis=1)
            yy += tl.sum(y * y, axis=1)
        else:
            u = x[:, None, :] - y[None, :, :]
            acc += tl.sum(u * u, axis=2)
    if DISTANCE == COSINE_DISTANCE:
        acc = _cosine_distance(acc, xx[:, None], yy[None, :], eps)
    elif DISTANCE != SQEUCLIDEAN_DISTANCE:
        acc = tl.sqrt(acc)
    tl.store(out_ptr + i[:, None] * os_r + j[None, :] * os_c, acc.to(out_ptr.dtype.element_ty),
             mask=(i[:, None] < N) & (j[None, :] < M))


@triton.jit
def _norms(ptr, rows, count, D, stride, ACC: tl.constexpr, BLOCK: tl.constexpr,
           BLOCK_D: tl.constexpr):
    """The Euclidean norms of the BLOCK rows ``rows`` (0 past ``count``)."""
    squares = tl.zeros((BLOCK,), dtype=ACC)
    for k0 in range(0, D, BLOCK_D):
        k = k0 + tl.arange(0, BLOCK_D)
        v = tl.load(ptr + rows[:, None] * stride + k[None, :],
                    mask=(rows[:, None] < count) & (k[None, :] < D), other=0.0).to(ACC)
        squares += tl.sum(v * v, axis=1)
    return tl.sqrt(squares)


@triton.jit
def _distance_matrix_backward_kernel(g_ptr, d_ptr, own_ptr, other_ptr, out_ptr, N, M, D,
                                     gs_r, gs_c, ds_r, ds_c, owns, others, outs, eps,
                                     DISTANCE: tl.constexpr, ACC: tl.constexpr,
                                     BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[i] = (sum_j a_ij) own_i - sum_j w_ij other_j over a (N, M)
    gradient and distances: a = w = grad / d (0 at d = 0) or 2 grad; the
    cosine's a = alpha, w = -beta (cnnk::cosine_slope_of_norms, the cosine
    1 - d), the norms of own's and other's rows recomputed per program."""
    d_tiles = tl.cdiv(D, BLOCK_D)
    i = (tl.program_id(0) // d_tiles) * BLOCK + tl.arange(0, BLOCK)
    k = (tl.program_id(0) % d_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    if DISTANCE == COSINE_DISTANCE:
        own_norms = _norms(own_ptr, i, N, D, owns, ACC, BLOCK, BLOCK_D)
    weight_sum = tl.zeros((BLOCK,), dtype=ACC)
    acc = tl.zeros((BLOCK, BLOCK_D), dtype=ACC)
    for j0 in range(0, M, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        inside = (i[:, None] < N) & (j[None, :] < M)
        grad = tl.load(g_ptr + i[:, None] * gs_r + j[None, :] * gs_c, mask=inside,
                       other=0.0).to(ACC)
        if DISTANCE == SQEUCLIDEAN_DISTANCE:
            w = 2.0 * grad
            a = w
        else:
            d = tl.load(d_ptr + i[:, None] * ds_r + j[None, :] * ds_c, mask=inside,
                        other=0.0).to(ACC)
            if DISTANCE == COSINE_DISTANCE:
                other_norms = _norms(other_ptr, j, M, D, others, ACC, BLOCK, BLOCK_D)
                a, _, beta = _cosine_slope_of_norms(grad, 1.0 - d, own_norms[:, None],
                                                    other_norms[None, :], eps)
                a = tl.where(inside, a, 0.0)
                w = tl.where(inside, -beta, 0.0)
            else:
                w = tl.where(d == 0, 0.0, grad / tl.where(d == 0, 1.0, d))
                a = w
        weight_sum += tl.sum(a, axis=1)
        other = tl.load(other_ptr + j[:, None] * others + k[None, :],
                        mask=(j[:, None] < M) & (k[None, :] < D), other=0.0).to(ACC)
        acc = tl.dot(w, other, acc, input_precision="ieee", out_dtype=ACC)
    mask = (i[:, None] < N) & (k[None, :] < D)
    own = tl.load(own_ptr + i[:, None] * owns + k[None, :], mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + i[:, None] * outs + k[None, :],
             (weight_sum[:, None] * own - acc).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mining_kernel(d_ptr, label_ptr, pos_ptr, neg_ptr, N, ds_r, ds_c, ls, pos_s, neg_s,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_rows = i < N
    label_i = tl.load(label_ptr + i * ls, mask=in_rows, other=0)
    best_pos = tl.full((BLOCK,), float("-inf"), dtype=ACC)
    best_neg = tl.full((BLOCK,), float("inf"), dtype=ACC)
    pos_index = tl.full((BLOCK,), -1, dtype=tl.int64)
    neg_index = tl.full((BLOCK,), -1, dtype=tl.int64)
    for j0 in range(0, N, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        inside = in_rows[:, None] & (j[None, :] < N)
        d = tl.load(d_ptr + i[:, None] * ds_r + j[None, :] * ds_c, mask=inside,
                    other=0.0).to(ACC)
        label_j = tl.load(label_ptr + j * ls, mask=j < N, other=0)
        same = label_i[:, None] == label_j[None, :]
        usable = inside & (d == d)
        positive = usable & same & (i[:, None] != j[None, :])
        negative = usable & (~same)
        jj = j[None, :].to(tl.int64) + tl.zeros((BLOCK, BLOCK), dtype=tl.int64)
        big = 2**62
        # The block's hardest (lowest index on a tie), replacing the best so far
        # only when strictly harder (or the first found).
        pos_value = tl.max(tl.where(positive, d, float("-inf")), axis=1)
        pos_at = tl.min(tl.where(positive & (d == pos_value[:, None]), jj, big), axis=1)
        take = (pos_at < big) & ((pos_index < 0) | (pos_value > best_pos))
        best_pos = tl.where(take, pos_value, best_pos)
        pos_index = tl.where(take, pos_at, pos_index)
        neg_value = tl.min(tl.where(negative, d, float("inf")), axis=1)
        neg_at = tl.min(tl.where(negative & (d == neg_value[:, None]), jj, big), axis=1)
        take = (neg_at < big) & ((neg_index < 0) | (neg_value < best_neg))
        best_neg = tl.where(take, neg_value, best_neg)
        neg_index = tl.where(take, neg_at, neg_index)
    tl.store(pos_ptr + i * pos_s, pos_index, mask=in_rows)
    tl.store(neg_ptr + i * neg_s, neg_index, mask=in_rows)


def _settings(g):
    """(power, offset, eps, margin) in the kernels' scalar arguments."""
    offset = g.eps if g.distance == _EUCLIDEAN else 0.0
    return g.p, offset, g.eps, g.margin


def _index_args(g, anchor, positive_index, negative_index):
    if g.indexed:
        return positive_index, negative_index, positive_index.stride(0), negative_index.stride(0)
    return anchor, anchor, 0, 0


def triplet_loss_forward(g, anchor, positive, negative, positive_index, negative_index,
                         partials, loss) -> None:
    """loss = the triplets' losses, or their sum / mean (partials in order)."""
    reduced = g.reduction != 0
    pi, ni, pis, nis = _index_args(g, anchor, positive_index, negative_index)
    programs = triton.cdiv(g.N, g.chunk)
    acc = acc_type(anchor.dtype)
    if programs:
        _triplet_forward_kernel[(programs,)](
            anchor, positive, negative, pi, ni, partials, loss, g.N, g.D, anchor.stride(0),
            positive.stride(0), negative.stride(0), pis, nis, loss.stride(0), *_settings(g),
            FORM=_pair_form(g.distance, g.p), SWAP=g.swap, INDEXED=g.indexed, REDUCED=reduced,
            ACC=acc, BLOCK_N=g.chunk, BLOCK_D=_BLOCK_D, num_warps=_NUM_WARPS)
    if reduced:
        _finish_kernel[(1,)](partials, loss, programs, g.N, pi, ni, pis, nis,
                             MEAN=g.reduction == _MEAN, INDEXED=g.indexed, ACC=acc,
                             BLOCK=_REDUCTION_BLOCK, num_warps=_NUM_WARPS)


def triplet_loss_backward(g, grad, anchor, positive, negative, positive_index, negative_index,
                          grad_anchor, grad_positive, grad_negative) -> None:
    pi, ni, pis, nis = _index_args(g, anchor, positive_index, negative_index)
    _triplet_backward_kernel[(triton.cdiv(g.N, g.chunk),)](
        grad, anchor, positive, negative, pi, ni, grad_anchor, grad_positive, grad_negative,
        g.N, g.D, grad.stride(0), anchor.stride(0), positive.stride(0), negative.stride(0),
        pis, nis, grad_anchor.stride(0), grad_positive.stride(0), grad_negative.stride(0),
        *_settings(g), FORM=_pair_form(g.distance, g.p), SWAP=g.swap, INDEXED=g.indexed,
        MEAN=g.reduction == _MEAN, ACC=acc_type(anchor.dtype), BLOCK_N=g.chunk,
        BLOCK_D=_BLOCK_D, num_warps=_NUM_WARPS)


def route_rows(g, rows, index, out) -> None:
    block_r, block_i, block_d = _ROUTE_TILES
    grid = triton.cdiv(g.M, block_r) * triton.cdiv(g.D, block_d)
    _route_rows_kernel[(grid,)](rows, index, out, g.N, g.M, g.D, rows.stride(0),
                                index.stride(0), out.stride(0), ACC=acc_type(rows.dtype),
                                BLOCK_R=block_r, BLOCK_I=block_i, BLOCK_D=block_d,
                                num_warps=_NUM_WARPS)


def distance_matrix_forward(g, x, y, out) -> None:
    grid = triton.cdiv(g.N, _BLOCK) * triton.cdiv(g.M, _BLOCK)
    _distance_matrix_kernel[(grid,)](x, y, out, g.N, g.M, g.D, x.stride(0), y.stride(0),
                                     *out.stride(), g.eps, DISTANCE=g.distance,
                                     ACC=acc_type(x.dtype), BLOCK=_BLOCK, BLOCK_K=_BLOCK_K,
                                     num_warps=_NUM_WARPS)


def distance_matrix_backward(g, grad, x, y, distances, grad_x, grad_y) -> None:
    """grad_x from the matrices as they are; grad_y from their transposes."""
    for own, other, out, n, m, transposed in ((x, y, grad_x, g.N, g.M, False),
                                               (y, x, grad_y, g.M, g.N, True)):
        if n == 0 or g.D == 0:
            continue
        gs = grad.stride()[::-1] if transposed else grad.stride()
        ds = distances.stride()[::-1] if transposed else distances.stride()
        _distance_matrix_backward_kernel[(triton.cdiv(n, _BLOCK) * triton.cdiv(g.D, _BLOCK),)](
            grad, distances, own, other, out, n, m, g.D, *gs, *ds, own.stride(0),
            other.stride(0), out.stride(0), g.eps, DISTANCE=g.distance, ACC=acc_type(x.dtype),
            BLOCK=_BLOCK, BLOCK_D=_BLOCK, num_warps=_NUM_WARPS)


def batch_hard_mining(g, distances, labels, positive_index, negative_index) -> None:
    _mining_kernel[(triton.cdiv(g.N, _BLOCK),)](
        distances, labels, positive_index, negative_index, g.N, *distances.stride(),
        labels.stride(0), positive_index.stride(0), negative_index.stride(0),
        ACC=acc_type(distances.dtype), BLOCK=_BLOCK, num_warps=_NUM_WARPS)


def static_check_specs():
    """Every kernel in every launch configuration the public functions use
    (dtype x form x swap x indexed x reduced), for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        rows = {"a_ptr": ptr, "p_ptr": ptr, "n_ptr": ptr, "pi_ptr": "*i64", "ni_ptr": "*i64",
                "power": "fp32", "offset": "fp32", "eps": "fp32", "margin": "fp32"}
        for form_name, form in _FORMS.items():
            for swap in (False, True):
                # Indexed triplets come from batch_hard_triplet_loss only: the
                # Euclidean (p = 2) or squared distance, without swap.
                indexed_too = form_name in ("norm2", "squared") and not swap
                for indexed in (False, True) if indexed_too else (False,):
                    flags = f"{dtype},{form_name},swap={swap},indexed={indexed}"
                    for reduced in (False, True):
                        specs.append(compile_spec(
                            f"metric_triplet_forward[{flags},reduced={reduced}]",
                            _triplet_forward_kernel,
                            pointers={**rows, "partial_ptr": "*fp32", "loss_ptr": ptr},
                            constexprs={"FORM": form, "SWAP": swap, "INDEXED": indexed,
                                        "REDUCED": reduced, "ACC": tl.float32, "BLOCK_N": _BLOCK_N,
                                        "BLOCK_D": _BLOCK_D}, num_warps=_NUM_WARPS))
                    specs.append(compile_spec(
                        f"metric_triplet_backward[{flags}]", _triplet_backward_kernel,
                        pointers={**rows, "g_ptr": ptr, "ga_ptr": ptr, "gp_ptr": ptr,
                                  "gn_ptr": ptr},
                        constexprs={"FORM": form, "SWAP": swap, "INDEXED": indexed,
                                    "MEAN": True, "ACC": tl.float32, "BLOCK_N": _BLOCK_N,
                                    "BLOCK_D": _BLOCK_D}, num_warps=_NUM_WARPS))
        for indexed in (False, True):
            specs.append(compile_spec(
                f"metric_finish[{dtype},indexed={indexed}]", _finish_kernel,
                pointers={"partial_ptr": "*fp32", "out_ptr": ptr, "pi_ptr": "*i64",
                          "ni_ptr": "*i64"},
                constexprs={"MEAN": True, "INDEXED": indexed, "ACC": tl.float32,
                            "BLOCK": _REDUCTION_BLOCK}, num_warps=_NUM_WARPS))
        block_r, block_i, block_d = _ROUTE_TILES
        specs.append(compile_spec(
            f"metric_route_rows[{dtype}]", _route_rows_kernel,
            pointers={"rows_ptr": ptr, "index_ptr": "*i64", "out_ptr": ptr},
            constexprs={"ACC": tl.float32, "BLOCK_R": block_r, "BLOCK_I": block_i,
                        "BLOCK_D": block_d}, num_warps=_NUM_WARPS))
        for distance_name, distance in _DISTANCE_NAMES.items():
            specs.append(compile_spec(
                f"metric_distance_matrix[{dtype},{distance_name}]", _distance_matrix_kernel,
                pointers={"x_ptr": ptr, "y_ptr": ptr, "out_ptr": ptr, "eps": "fp32"},
                constexprs={"DISTANCE": distance, "ACC": tl.float32, "BLOCK": _BLOCK,
                            "BLOCK_K": _BLOCK_K}, num_warps=_NUM_WARPS))
            specs.append(compile_spec(
                f"metric_distance_matrix_backward[{dtype},{distance_name}]",
                _distance_matrix_backward_kernel,
                pointers={"g_ptr": ptr, "d_ptr": ptr, "own_ptr": ptr, "other_ptr": ptr,
                          "out_ptr": ptr, "eps": "fp32"},
                constexprs={"DISTANCE": distance, "ACC": tl.float32, "BLOCK": _BLOCK,
                            "BLOCK_D": _BLOCK}, num_warps=_NUM_WARPS))
        specs.append(compile_spec(
            f"metric_mining[{dtype}]", _mining_kernel,
            pointers={"d_ptr": ptr, "label_ptr": "*i64", "pos_ptr": "*i64", "neg_ptr": "*i64"},
            constexprs={"ACC": tl.float32, "BLOCK": _BLOCK}, num_warps=_NUM_WARPS))
    return specs
