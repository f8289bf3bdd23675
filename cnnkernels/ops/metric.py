"""metric: the losses of metric learning, for the Siamese networks of the
course notes' face verification (4.0): the triplet margin loss, pairwise
distance matrices and batch-hard triplet mining.

Operators (``torch.ops.cnnk.*``), each a plan (cnnkernels/ops/_define.py):
``triplet_loss(anchor, positive, negative, positive_index, negative_index,
...)``: per triplet the distances, the hinge and the reduction, fused in
one kernel (partials of ``_CHUNK`` rows added in order: deterministic);
with indices, triplet i takes the rows positive[positive_index[i]] and
negative[negative_index[i]], and a negative index excludes it (the mean
then divides by the triplets included). ``triplet_loss_backward``: the
gradients of the three rows of every triplet, (N, D) each.
``route_rows(rows, index, M)``: row r of the (M, D) result is the sum of
the rows i with index[i] == r in increasing i (the indexed rows' backward,
without atomics). ``distance_matrix(x, y, distance, eps)`` and its
backward (which reads the forward's distances: the cosine's slope needs
the cosine itself);
``batch_hard_mining(distances, labels)``: per anchor the hardest positive
and negative. The launchers have the same names and arguments on every
backend: kernels/metric.py (Triton), csrc/cpu/metric.cpp and
csrc/cuda/metric.cu (contracts in csrc/include/cnnk/metric.h).

Distances: ``"euclidean"``, torch's ``pairwise_distance``
||x - y + eps||_p (p > 0 finite; torch also takes p = 0 and infinity);
``"sqeuclidean"``, ||x - y||^2, the course's form of the triplet loss;
``"cosine"``, 1 - x.y / (max(||x||, eps) max(||y||, eps)), the notes'
cosine form written as a distance (the notes print the similarities, whose
difference has the opposite sign). The cosine's eps is the same on every
op: each norm is clamped at eps on its own (F.cosine_similarity's values),
a clamped norm is a constant (no gradient through it; torch's clamp_min
passes it where the norm equals eps), so a zero row is at distance 1 from
every row, takes gradient -y / (eps max(||y||, eps)) and gives none to y;
eps = 0 leaves a zero row's distance NaN.

Derivatives, every order torch's triplet loss has (and forward mode): the
backward ops have derivatives of their own, composed from the family's
ops where one computes the piece. ``route_rows`` is linear: its backward
is a gather of the incoming rows (no op of the family gathers rows; torch
indexing, itself differentiable), its jvp ``route_rows`` again.
``triplet_loss_backward`` is linear in its incoming gradient: the
derivative along that gradient is the loss's tangent (this op with
gradient 1, contracted with the rows). Its derivative along the rows is
the distances' Hessians applied to the rows' cotangents, weighted by the
hinge's coefficients (piecewise constant: their derivative is 0), written
in torch ops (``_pair_hessian_product``): no op of the family can give
it, the fused kernels return each triplet's hinge-weighted sum of its
pairs' slopes, while a Hessian product needs every pair's own slope and
its dot with the cotangent (the 2-norm's (v - g (g.v)) / d, the cosine's
products of x and y with v and w). ``distance_matrix_backward``: along the
gradient, the matrix's tangent (the jvp rule); the Euclidean and squared
along x and y, ``distance_matrix_backward`` itself on the cotangents
(the distances held: their weight is linear in the rows' differences),
and along the saved distances -grad * tangent / d; the cosine's along x
and y is the pairs' Hessian product again (the saved distances taken as
the function of x and y they are), in torch ops on (N, M, D) pairs. The
batch-hard mining is piecewise constant: its indices are constants.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.nn import _reduction

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import (
    Family,
    Launch,
    define_op,
    incoming_scalar,
    reverse_mode_only,
    save,
)

FAMILY = Family(name="metric",
                public=("triplet_margin_loss", "pairwise_distance_matrix",
                        "batch_hard_triplet_loss"),
                triton_modules=("cnnkernels.kernels.metric",),
                bench_module="cnnkernels.bench.metric")

__all__ = list(FAMILY.public)

# cnnk::Distance's and cnnk::Reduction's codes.
DISTANCES = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
MATRIX_DISTANCES = ("euclidean", "sqeuclidean", "cosine")
COSINE_EPS = 1e-8  # the matrix's and batch-hard's default clamp: F.cosine_similarity's
_CHUNK = 8  # triplets per partial sum on every backend (a CUDA block: a warp each)


@dataclass(frozen=True)
class TripletGeometry:
    """Field for field ``cnnk::TripletGeometry`` (csrc/include/cnnk/metric.h)."""

    N: int
    D: int
    distance: int
    p: float
    eps: float
    margin: float
    swap: bool
    reduction: int
    indexed: bool
    chunk: int

    def index_extent(self) -> int:
        return max(self.N, self.D) + self.chunk


@dataclass(frozen=True)
class RouteGeometry:
    N: int
    M: int
    D: int

    def index_extent(self) -> int:
        return max(self.N, self.M, self.D)


@dataclass(frozen=True)
class DistanceMatrixGeometry:
    N: int
    M: int
    D: int
    distance: int
    eps: float  # the cosine's norm clamp (the other distances ignore it)

    def index_extent(self) -> int:
        return max(self.N, self.M, self.D)


@dataclass(frozen=True)
class MiningGeometry:
    N: int

    def index_extent(self) -> int:
        return self.N


def _triton():
    from cnnkernels.kernels import metric

    return metric


def _rows(t: Tensor, name: str) -> Tensor:
    """A 2-D floating-point tensor whose rows are contiguous (what the
    kernels read); a copy only for rows that are not."""
    _args.check_tensor(t, name, ndim=2)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t if t.stride(1) == 1 or t.shape[1] <= 1 else t.contiguous()


def _indices(t: Optional[Tensor], name: str, n: int, rows: int, like: Tensor) -> None:
    if t is None:
        return
    _args.check_tensor(t, name, ndim=1)
    if t.dtype != torch.int64 or t.device != like.device:
        raise TypeError(f"{name} must be an int64 tensor on {like.device}, got {t.dtype} on "
                        f"{t.device}")
    if t.shape[0] != n:
        raise ValueError(f"{name} must hold one index per triplet ({n}), got {t.shape[0]}")


def _triplet_geometry(anchor, positive, negative, positive_index, negative_index, margin, p,
                      eps, swap, reduction, distance) -> tuple[TripletGeometry, list[Tensor]]:
    """The geometry and the three tensors as the kernels read them."""
    rows = [_rows(t, name) for t, name in ((anchor, "anchor"), (positive, "positive"),
                                            (negative, "negative"))]
    _args.check_same(anchor, "anchor", {"positive": positive, "negative": negative})
    indexed = positive_index is not None
    if indexed != (negative_index is not None):
        raise ValueError("positive_index and negative_index must be given together")
    N, D = anchor.shape
    for name, t in (("positive", positive), ("negative", negative)):
        if t.shape[1] != D or (not indexed and t.shape[0] != N):
            expected = f"(M, {D})" if indexed else f"({N}, {D})"
            raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    _indices(positive_index, "positive_index", N, positive.shape[0], anchor)
    _indices(negative_index, "negative_index", N, negative.shape[0], anchor)
    if distance not in DISTANCES.values() or reduction not in REDUCTIONS.values():
        raise ValueError(f"distance must be one of {sorted(DISTANCES.values())} and reduction "
                         f"one of {sorted(REDUCTIONS.values())}, got {distance!r}, {reduction!r}")
    return TripletGeometry(N, D, int(distance), float(p), float(eps), float(margin), bool(swap),
                           int(reduction), indexed, _CHUNK), rows


def _partials(g: TripletGeometry, like: Tensor) -> Tensor:
    return torch.empty(max(1, -(-g.N // g.chunk)), device=like.device,
                       dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)


@define_op("cnnk::triplet_loss", returns=Tensor)
def triplet_loss_op(anchor: Tensor, positive: Tensor, negative: Tensor,
                    positive_index: Optional[Tensor], negative_index: Optional[Tensor],
                    margin: float, p: float, eps: float, swap: bool, reduction: int,
                    distance: int, backend: str) -> Launch:
    """(N,) losses (reduction none) or their sum / mean (0-d)."""
    g, rows = _triplet_geometry(anchor, positive, negative, positive_index, negative_index,
                                margin, p, eps, swap, reduction, distance)
    loss = anchor.new_empty((g.N,) if reduction == REDUCTIONS["none"] else ())
    partials = _partials(g, anchor)
    return Launch(loss, {"anchor": anchor, "positive": positive, "negative": negative,
                         "positive_index": positive_index, "negative_index": negative_index,
                         "partials": partials, "loss": loss},
                  lambda b: _ext.launchers(b, anchor, _triton).triplet_loss_forward(
                      g, *rows, positive_index, negative_index, partials, loss.view(-1)),
                  g.index_extent())


@define_op("cnnk::triplet_loss_backward", returns=tuple[Tensor, Tensor, Tensor])
def triplet_loss_backward_op(grad: Tensor, anchor: Tensor, positive: Tensor, negative: Tensor,
                             positive_index: Optional[Tensor], negative_index: Optional[Tensor],
                             margin: float, p: float, eps: float, swap: bool, reduction: int,
                             distance: int, backend: str) -> Launch:
    """The gradients of each triplet's anchor, positive and negative rows
    (N, D), for the incoming gradient ``grad`` of the loss."""
    g, rows = _triplet_geometry(anchor, positive, negative, positive_index, negative_index,
                                margin, p, eps, swap, reduction, distance)
    expected = (g.N,) if reduction == REDUCTIONS["none"] else ()
    _args.check_tensor(grad, "grad", ndim=len(expected))
    _args.check_same(anchor, "anchor", {"grad": grad})
    if tuple(grad.shape) != expected:
        raise ValueError(f"grad must have shape {expected}, got {tuple(grad.shape)}")
    grads = tuple(anchor.new_empty((g.N, g.D)) for _ in range(3))
    return Launch(grads, {"anchor": anchor, "positive": positive, "negative": negative,
                          "grad": grad, "positive_index": positive_index,
                          "negative_index": negative_index, "grad_anchor": grads[0],
                          "grad_positive": grads[1], "grad_negative": grads[2]},
                  lambda b: _ext.launchers(b, anchor, _triton).triplet_loss_backward(
                      g, grad.reshape(1).expand(g.N) if grad.dim() == 0 else grad, *rows,
                      positive_index, negative_index, *grads),
                  g.index_extent())


@define_op("cnnk::triplet_loss_with_gradients", returns=tuple[Tensor, Tensor, Tensor, Tensor])
def triplet_loss_with_gradients_op(anchor: Tensor, positive: Tensor, negative: Tensor,
                                   positive_index: Optional[Tensor],
                                   negative_index: Optional[Tensor], margin: float, p: float,
                                   eps: float, swap: bool, reduction: int, distance: int,
                                   backend: str) -> Launch:
    """The loss (as cnnk::triplet_loss) and each triplet's anchor, positive
    and negative row gradients (N, D) for an incoming gradient of 1: the
    reverse mode's forward on the cpu, where one pass over the rows
    computes both and a backward of gradient 1 (``loss.backward()``)
    then returns them without a second op call. cpu: one fused kernel;
    the other backends run their forward and backward kernels."""
    g, rows = _triplet_geometry(anchor, positive, negative, positive_index, negative_index,
                                margin, p, eps, swap, reduction, distance)
    loss = anchor.new_empty((g.N,) if reduction == REDUCTIONS["none"] else ())
    partials = _partials(g, anchor)
    grads = tuple(anchor.new_empty((g.N, g.D)) for _ in range(3))

    def run(backend: str) -> None:
        kernels = _ext.launchers(backend, anchor, _triton)
        indices = (positive_index, negative_index)
        if backend == "cpu":
            kernels.triplet_loss_forward_backward(g, *rows, *indices, partials, loss.view(-1),
                                                  *grads)
            return
        kernels.triplet_loss_forward(g, *rows, *indices, partials, loss.view(-1))
        if g.N and g.D:
            kernels.triplet_loss_backward(g, anchor.new_ones(1).expand(g.N), *rows, *indices,
                                          *grads)

    return Launch((loss, *grads), {"anchor": anchor, "positive": positive,
                                   "negative": negative, "positive_index": positive_index,
                                   "negative_index": negative_index, "partials": partials,
                                   "loss": loss, "grad_anchor": grads[0],
                                   "grad_positive": grads[1], "grad_negative": grads[2]},
                  run, g.index_extent())


@define_op("cnnk::route_rows", returns=Tensor)
def route_rows_op(rows: Tensor, index: Tensor, count: int, backend: str) -> Launch:
    """(count, D): row r the sum of the rows i with index[i] == r (in i order)."""
    rows = _rows(rows, "rows")
    N, D = rows.shape
    _indices(index, "index", N, count, rows)
    g = RouteGeometry(N, int(count), D)
    out = rows.new_empty((g.M, D))
    return Launch(out, {"rows": rows, "index": index, "out": out},
                  lambda b: _ext.launchers(b, rows, _triton).route_rows(g, rows, index, out),
                  g.index_extent())


def _triplet_setup(ctx, inputs, output) -> None:
    save(ctx, *inputs[:5])
    ctx.settings = inputs[5:]


def _triplet_backward(ctx, grad):
    anchor, positive, negative, positive_index, negative_index = ctx.saved_tensors
    grads = triplet_loss_backward_op(grad.contiguous(), anchor, positive, negative,
                                     positive_index, negative_index, *ctx.settings)
    return _routed(ctx, grads)


def _routed(ctx, grads):
    """The inputs' gradients from the triplets' row gradients (indexed
    rows: each positive and negative row the sum of its triplets' rows)."""
    _, positive, negative, positive_index, negative_index = ctx.saved_tensors
    if positive_index is not None:
        backend = ctx.settings[-1]
        grads = (grads[0], route_rows_op(grads[1], positive_index, positive.shape[0], backend),
                 route_rows_op(grads[2], negative_index, negative.shape[0], backend))
    return (*grads, None, None, *(None,) * len(ctx.settings))


def _gathered(rows: Optional[Tensor], index: Optional[Tensor]) -> Optional[Tensor]:
    """The tangent rows triplet i reads (zero rows for excluded triplets)."""
    if rows is None or index is None:
        return rows
    return rows[index.clamp_min(0)] * (index >= 0).unsqueeze(1)


def _mean_divisor(n: int, positive_index, negative_index):
    """The mean's divisor: n, or the triplets included (at least 1)."""
    if positive_index is None:
        return n
    return ((positive_index >= 0) & (negative_index >= 0)).sum().clamp_min(1)


def _reduced(per_triplet: Tensor, reduction: int, positive_index, negative_index) -> Tensor:
    if reduction == REDUCTIONS["none"]:
        return per_triplet
    if reduction == REDUCTIONS["sum"]:
        return per_triplet.sum()
    return per_triplet.sum() / _mean_divisor(per_triplet.shape[0], positive_index,
                                             negative_index)


def _loss_tangent(anchor, positive, negative, positive_index, negative_index, settings,
                  tangents) -> Tensor:
    """The reduced loss's tangent along per-triplet tangent rows (None: zero):
    the rows' gradients of each triplet's loss (reduction none, incoming
    gradient 1) contracted with them, then reduced."""
    margin, p, eps, swap, reduction, distance, backend = settings
    ones = anchor.new_ones(anchor.shape[0])
    grads = triplet_loss_backward_op(ones, anchor, positive, negative, positive_index,
                                     negative_index, margin, p, eps, swap, REDUCTIONS["none"],
                                     distance, backend)
    result = torch.zeros_like(ones)
    for grad, tangent in zip(grads, tangents, strict=True):
        if tangent is not None:
            result = result + (grad * tangent).sum(-1)
    return _reduced(result, reduction, positive_index, negative_index)


def _triplet_jvp(ctx, anchor_t, positive_t, negative_t, *_):
    anchor, positive, negative, positive_index, negative_index = ctx.saved_tensors
    return _loss_tangent(anchor, positive, negative, positive_index, negative_index,
                         ctx.settings, (anchor_t, _gathered(positive_t, positive_index),
                                        _gathered(negative_t, negative_index)))


triplet_loss_op.register_derivatives(setup_context=_triplet_setup, backward=_triplet_backward,
                                     jvp=_triplet_jvp)


def _with_gradients_setup(ctx, inputs, output) -> None:
    _triplet_setup(ctx, inputs, output)
    ctx.mark_non_differentiable(*output[1:])
    # The gradient outputs take no gradient: no zeros made for them.
    ctx.set_materialize_grads(False)
    ctx.unit_gradients = output[1:]


def _with_gradients_backward(ctx, grad, *_):
    """The first backward of a reduced loss with gradient 1 (not recording
    a graph) returns the forward's gradients, and gives them up (a retained
    graph's next backward recomputes); any other runs the backward op."""
    unit, ctx.unit_gradients = ctx.unit_gradients, None
    if grad is None:
        return (None,) * (5 + len(ctx.settings))
    if unit is not None and incoming_scalar(grad) == 1.0:
        return _routed(ctx, unit)
    return _triplet_backward(ctx, grad)


def _with_gradients_jvp(ctx, anchor_t, positive_t, negative_t, *_):
    return _triplet_jvp(ctx, anchor_t, positive_t, negative_t), None, None, None


triplet_loss_with_gradients_op.register_derivatives(setup_context=_with_gradients_setup,
                                                    backward=_with_gradients_backward,
                                                    jvp=_with_gradients_jvp)


def _dot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(-1, keepdim=True)


def _pair_distance(x: Tensor, y: Tensor, distance: int, p: float, eps: float) -> Tensor:
    """d(x, y) of rows (..., D) as the kernels define it, (..., 1)."""
    if distance == DISTANCES["cosine"]:
        norms = x.norm(dim=-1, keepdim=True).clamp_min(eps) \
            * y.norm(dim=-1, keepdim=True).clamp_min(eps)
        return 1 - _dot(x, y) / norms
    if distance == DISTANCES["sqeuclidean"]:
        return _dot(x - y, x - y)
    return torch.linalg.vector_norm(x - y + eps, ord=p, dim=-1, keepdim=True)


def _cosine_hessian_product(x, y, v, w, eps):
    """(H_xx v + H_xy w, H_yx v + H_yy w), H the Hessian of the cosine
    distance d = 1 - x.y / (m_x m_y) (m = max(n, eps), n the norm; a clamped
    norm is a constant). The slope along x is a_x x + b y with a_x =
    cos / (m_x n_x) (0 when clamped), b = -1 / (m_x m_y); differentiating
    it and contracting: H_xx v + H_xy w = a_x v + b w + (x.v) da_x/dx +
    (y.v + x.w) db/dx + (y.w) da_y/dx, with da_x/dx = -g_x / n_x^2 -
    2 cos x / n_x^4, db/dx = x / (n_x^3 m_y), da_y/dx = -g_x / (m_y n_y),
    g_x the slope; y's by symmetry."""
    nx, ny = x.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)
    free_x, free_y = nx >= eps, ny >= eps
    mx, my = nx.clamp_min(eps), ny.clamp_min(eps)
    sx, sy = torch.where(free_x, nx, 1), torch.where(free_y, ny, 1)  # safe divisors
    cosine = _dot(x, y) / (mx * my)
    beta = -1 / (mx * my)
    alpha_x = torch.where(free_x, cosine / (mx * sx), 0)
    alpha_y = torch.where(free_y, cosine / (my * sy), 0)
    slope_x, slope_y = alpha_x * x + beta * y, alpha_y * y + beta * x
    xv, yv, xw, yw = _dot(x, v), _dot(y, v), _dot(x, w), _dot(y, w)

    def along(own, slope, s_own, m_other, free_own):
        """d(alpha_own)/d own, d(beta)/d own."""
        return (torch.where(free_own, -slope / s_own ** 2 - 2 * cosine * own / s_own ** 4, 0),
                torch.where(free_own, own / (s_own ** 3 * m_other), 0))

    dax_dx, db_dx = along(x, slope_x, sx, my, free_x)
    day_dy, db_dy = along(y, slope_y, sy, mx, free_y)
    day_dx = torch.where(free_y, -slope_x / (my * sy), 0)
    dax_dy = torch.where(free_x, -slope_y / (mx * sx), 0)
    hx = alpha_x * v + beta * w + dax_dx * xv + db_dx * (yv + xw) + day_dx * yw
    hy = alpha_y * w + beta * v + day_dy * yw + db_dy * (xw + yv) + dax_dy * xv
    return hx, hy


def _pair_hessian_product(x, y, v, w, distance: int, p: float, eps: float):
    """(H_xx v + H_xy w, H_yx v + H_yy w) for d(x, y) of rows (..., D) with
    cotangents (or tangents: H is symmetric) v of x and w of y. The
    difference forms depend on u = x - y (+ eps): H_xy = -H_xx, and the
    p-norm's H_xx t = (p - 1) / d (|u / d|^(p - 2) t - g (g.t)), g = the
    slope sign(u) |u / d|^(p - 1) (2 t for the squared distance; 0 where
    d = 0, torch's norm backward's)."""
    if distance == DISTANCES["cosine"]:
        return _cosine_hessian_product(x, y, v, w, eps)
    t = v - w
    if distance == DISTANCES["sqeuclidean"]:
        return 2 * t, -2 * t
    u = x - y + eps
    d = torch.linalg.vector_norm(u, ord=p, dim=-1, keepdim=True)
    ratio = u / torch.where(d == 0, 1, d)
    slope = ratio.sign() * ratio.abs() ** (p - 1)
    diagonal = ratio.abs() ** (p - 2) if p >= 2 else torch.where(u == 0, 0, ratio.abs() ** (p - 2))
    h = torch.where(d == 0, 0, (p - 1) / torch.where(d == 0, 1, d)
                    * (diagonal * t - slope * _dot(slope, t)))
    return h, -h


def _triplet_hessian_product(grad, anchor, positive, negative, positive_index, negative_index,
                             settings, cotangents):
    """The rows' derivative of sum over the triplets of cotangents . (their
    gradient rows), per triplet (N, D) each: each pair's Hessian product
    times its hinge coefficient (grad, the reduction's divisor, the active
    hinge, swap's share: cnnk::triplet_row's)."""
    margin, p, eps, swap, reduction, distance, _ = settings
    pos, neg = _gathered(positive, positive_index), _gathered(negative, negative_index)
    weight = grad.reshape(-1, 1).expand(anchor.shape[0], 1)  # grad_i, or the reduced loss's
    if reduction == REDUCTIONS["mean"]:
        weight = weight / _mean_divisor(anchor.shape[0], positive_index, negative_index)
    pair = {name: _pair_distance(x, y, distance, p, eps)
            for name, x, y in (("ap", anchor, pos), ("an", anchor, neg), ("pn", pos, neg))}
    d_neg = torch.where(pair["pn"] < pair["an"], pair["pn"], pair["an"]) if swap else pair["an"]
    active = (margin + pair["ap"] - d_neg) >= 0
    if positive_index is not None:
        active = active & ((positive_index >= 0) & (negative_index >= 0)).unsqueeze(1)
    c_ap = torch.where(active, weight, 0)
    share_an = 1.0
    if swap:
        share_an = torch.where(pair["an"] < pair["pn"], 1.0,
                               torch.where(pair["pn"] < pair["an"], 0.0, 0.5))
    c_an, c_pn = -c_ap * share_an, -c_ap * (1 - share_an)
    v_a, v_p, v_n = (torch.zeros_like(anchor) if t is None else t for t in cotangents)
    ha_ap, hp_ap = _pair_hessian_product(anchor, pos, v_a, v_p, distance, p, eps)
    ha_an, hn_an = _pair_hessian_product(anchor, neg, v_a, v_n, distance, p, eps)
    rows = [c_ap * ha_ap + c_an * ha_an, c_ap * hp_ap, c_an * hn_an]
    if swap:
        hp_pn, hn_pn = _pair_hessian_product(pos, neg, v_p, v_n, distance, p, eps)
        rows[1] = rows[1] + c_pn * hp_pn
        rows[2] = rows[2] + c_pn * hn_pn
    return rows


def _triplet_backward_setup(ctx, inputs, output) -> None:
    save(ctx, *inputs[:6])
    ctx.settings = inputs[6:]


def _triplet_double_backward(ctx, grad_anchor, grad_positive, grad_negative):
    """Along the incoming gradient: the loss's tangent along the rows'
    cotangents; along the rows: the Hessian product (the indexed tables'
    rows routed)."""
    grad, anchor, positive, negative, positive_index, negative_index = ctx.saved_tensors
    settings, need = ctx.settings, ctx.needs_input_grad
    cotangents = (grad_anchor, grad_positive, grad_negative)
    grad_of_grad = None
    if need[0]:
        grad_of_grad = _loss_tangent(anchor, positive, negative, positive_index,
                                     negative_index, settings, cotangents).reshape(grad.shape)
    rows = [None, None, None]
    if any(need[1:4]):
        rows = _triplet_hessian_product(grad, anchor, positive, negative, positive_index,
                                        negative_index, settings, cotangents)
        if positive_index is not None:
            backend = settings[-1]
            rows[1] = route_rows_op(rows[1], positive_index, positive.shape[0], backend)
            rows[2] = route_rows_op(rows[2], negative_index, negative.shape[0], backend)
    return (grad_of_grad, *rows, None, None, *(None,) * len(settings))


def _triplet_backward_jvp(ctx, grad_t, anchor_t, positive_t, negative_t, *_):
    grad, anchor, positive, negative, positive_index, negative_index = ctx.saved_tensors
    settings = ctx.settings
    tangents = [torch.zeros_like(anchor) for _ in range(3)]
    if grad_t is not None:
        tangents = list(triplet_loss_backward_op(grad_t, anchor, positive, negative,
                                                 positive_index, negative_index, *settings))
    if any(t is not None for t in (anchor_t, positive_t, negative_t)):
        rows_t = (anchor_t, _gathered(positive_t, positive_index),
                  _gathered(negative_t, negative_index))
        rows = _triplet_hessian_product(grad, anchor, positive, negative, positive_index,
                                        negative_index, settings, rows_t)
        tangents = [t + r for t, r in zip(tangents, rows, strict=True)]
    return tuple(tangents)


triplet_loss_backward_op.register_derivatives(setup_context=_triplet_backward_setup,
                                              backward=_triplet_double_backward,
                                              jvp=_triplet_backward_jvp)


def _route_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[1])
    ctx.count, ctx.backend = inputs[2], inputs[3]


def _route_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return _gathered(grad, index), None, None, None


def _route_jvp(ctx, rows_t, *_):
    (index,) = ctx.saved_tensors
    return route_rows_op(rows_t, index, ctx.count, ctx.backend)


route_rows_op.register_derivatives(setup_context=_route_setup, backward=_route_backward,
                                   jvp=_route_jvp)


@define_op("cnnk::distance_matrix", returns=Tensor)
def distance_matrix_op(x: Tensor, y: Tensor, distance: int, eps: float, backend: str) -> Launch:
    """(N, M) distances between the rows of x (N, D) and y (M, D)."""
    g = _matrix_geometry(x, y, distance, eps)
    out = x.new_empty((g.N, g.M))
    rows = _rows(x, "x"), _rows(y, "y")
    return Launch(out, {"x": x, "y": y, "out": out},
                  lambda b: _ext.launchers(b, x, _triton).distance_matrix_forward(g, *rows, out),
                  # Empty rows: distance 0, but cosine 1 - 0 (the kernels' value).
                  g.index_extent(), empty_sum=g.D == 0 and distance != DISTANCES["cosine"])


@define_op("cnnk::distance_matrix_backward", returns=tuple[Tensor, Tensor])
def distance_matrix_backward_op(grad: Tensor, x: Tensor, y: Tensor, distances: Tensor,
                                distance: int, eps: float, backend: str) -> Launch:
    """(grad_x, grad_y) from the gradient of the (N, M) distances."""
    g = _matrix_geometry(x, y, distance, eps)
    for name, t in (("grad", grad), ("distances", distances)):
        _args.check_tensor(t, name, ndim=2)
        _args.check_same(x, "x", {name: t})
        if tuple(t.shape) != (g.N, g.M):
            raise ValueError(f"{name} must have shape {(g.N, g.M)}, got {tuple(t.shape)}")
    grad_x, grad_y = x.new_empty((g.N, g.D)), x.new_empty((g.M, g.D))
    rows = _rows(x, "x"), _rows(y, "y")
    return Launch((grad_x, grad_y), {"x": x, "y": y, "grad": grad, "distances": distances,
                                     "grad_x": grad_x, "grad_y": grad_y},
                  lambda b: _ext.launchers(b, x, _triton).distance_matrix_backward(
                      g, grad, *rows, distances, grad_x, grad_y),
                  g.index_extent(), empty_sum=g.N == 0 or g.M == 0)


def _matrix_geometry(x: Tensor, y: Tensor, distance: int, eps: float) -> DistanceMatrixGeometry:
    _rows(x, "x")
    _rows(y, "y")
    _args.check_same(x, "x", {"y": y})
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have rows of one size, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    codes = [DISTANCES[name] for name in MATRIX_DISTANCES]
    if distance not in codes:
        raise ValueError(f"distance must be one of {codes}, got {distance!r}")
    return DistanceMatrixGeometry(x.shape[0], y.shape[0], x.shape[1], int(distance), float(eps))


def _matrix_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0], inputs[1], output)
    ctx.distance, ctx.eps, ctx.backend = inputs[2], inputs[3], inputs[4]


def _matrix_backward(ctx, grad):
    x, y, distances = ctx.saved_tensors
    grad_x, grad_y = distance_matrix_backward_op(grad, x, y, distances, ctx.distance, ctx.eps,
                                                 ctx.backend)
    return grad_x, grad_y, None, None, None


def _cosine_matrix_jvp(x, y, x_t, y_t, distances, eps):
    """d(d_ij) = cos_ij (x_i.x'_i / (m_i n_i) + y_j.y'_j / (m_j n_j))
    - (x'_i.y_j + x_i.y'_j) / (m_i m_j): n the norms, m = max(n, eps), a
    clamped norm's term 0 (cnnk::cosine_slope_of_norms with c = 1)."""
    def terms(rows, tangent):
        norm = rows.norm(dim=1)
        clamped = norm.clamp_min(eps)
        if tangent is None:
            return clamped, 0
        free = norm >= eps
        inverse = torch.where(free, 1 / (clamped * torch.where(free, norm, 1)), 0)
        return clamped, (rows * tangent).sum(1) * inverse
    x_clamped, x_term = terms(x, x_t)
    y_clamped, y_term = terms(y, y_t)
    cross = torch.zeros_like(distances)
    if x_t is not None:
        cross = cross + x_t @ y.T
    if y_t is not None:
        cross = cross + x @ y_t.T
    x_term = x_term[:, None] if x_t is not None else 0
    y_term = y_term[None] if y_t is not None else 0
    return (1 - distances) * (x_term + y_term) - cross / (x_clamped[:, None] * y_clamped[None])


def _matrix_tangent(x, y, x_t, y_t, distances, distance: int, eps: float) -> Tensor:
    """The distances' tangent along (x_t, y_t) (None: zero): _matrix_jvp's."""
    if distance == DISTANCES["cosine"]:
        return _cosine_matrix_jvp(x, y, x_t, y_t, distances, eps)
    difference = x[:, None] - y[None]
    tangent = (x_t if x_t is not None else torch.zeros_like(x))[:, None] \
        - (y_t if y_t is not None else torch.zeros_like(y))[None]
    dot = (difference * tangent).sum(-1)
    if distance == DISTANCES["sqeuclidean"]:
        return 2 * dot
    return torch.where(distances == 0, 0, dot / distances)


def _matrix_jvp(ctx, x_t, y_t, *_):
    """d(d_ij) = w_ij (x_i - y_j).(x'_i - y'_j), w = 1 / d (0 at d = 0) or 2;
    the cosine's in _cosine_matrix_jvp."""
    x, y, distances = ctx.saved_tensors
    return _matrix_tangent(x, y, x_t, y_t, distances, ctx.distance, ctx.eps)


distance_matrix_op.register_derivatives(setup_context=_matrix_setup, backward=_matrix_backward,
                                        jvp=_matrix_jvp)


def _matrix_backward_setup(ctx, inputs, output) -> None:
    save(ctx, *inputs[:4])
    ctx.distance, ctx.eps, ctx.backend = inputs[4:]


def _matrix_double_backward(ctx, grad_x_bar, grad_y_bar):
    """Along the gradient: the distances' tangent along the cotangents;
    along x and y (the distances held) the Euclidean and squared forms'
    backward op on the cotangents, along the distances -grad tangent / d;
    the cosine's along x and y: the pairs' Hessian product (its distances
    the function of x and y they are: no derivative along them)."""
    grad, x, y, distances = ctx.saved_tensors
    distance, eps, backend = ctx.distance, ctx.eps, ctx.backend
    need = ctx.needs_input_grad
    tangent = None
    if need[0] or (need[3] and distance == DISTANCES["euclidean"]):
        tangent = _matrix_tangent(x, y, grad_x_bar, grad_y_bar, distances, distance, eps)
    grad_of_grad = tangent if need[0] else None
    if distance == DISTANCES["cosine"]:
        hx, hy = _pair_hessian_product(x[:, None], y[None], grad_x_bar[:, None],
                                       grad_y_bar[None], distance, 2.0, eps)
        weight = grad.unsqueeze(-1)
        return grad_of_grad, (weight * hx).sum(1), (weight * hy).sum(0), None, None, None, None
    grad_of_x = grad_of_y = grad_of_distances = None
    if need[1] or need[2]:
        grad_of_x, grad_of_y = distance_matrix_backward_op(grad, grad_x_bar, grad_y_bar,
                                                           distances, distance, eps, backend)
    if need[3] and distance == DISTANCES["euclidean"]:
        grad_of_distances = torch.where(distances == 0, 0, -grad * tangent / distances)
    return grad_of_grad, grad_of_x, grad_of_y, grad_of_distances, None, None, None


def _matrix_backward_jvp(ctx, grad_t, x_t, y_t, distances_t, *_):
    grad, x, y, distances = ctx.saved_tensors
    distance, eps, backend = ctx.distance, ctx.eps, ctx.backend
    tangent_x, tangent_y = torch.zeros_like(x), torch.zeros_like(y)
    if grad_t is not None:
        tangent_x, tangent_y = distance_matrix_backward_op(grad_t, x, y, distances, distance,
                                                           eps, backend)
    if x_t is not None or y_t is not None:
        x_t = torch.zeros_like(x) if x_t is None else x_t
        y_t = torch.zeros_like(y) if y_t is None else y_t
        if distance == DISTANCES["cosine"]:
            # H is symmetric: the tangents' product is the cotangents'.
            hx, hy = _pair_hessian_product(x[:, None], y[None], x_t[:, None], y_t[None],
                                           distance, 2.0, eps)
            along_x, along_y = (grad.unsqueeze(-1) * hx).sum(1), (grad.unsqueeze(-1) * hy).sum(0)
        else:
            along_x, along_y = distance_matrix_backward_op(grad, x_t, y_t, distances, distance,
                                                           eps, backend)
        tangent_x, tangent_y = tangent_x + along_x, tangent_y + along_y
    # The cosine's terms above are total derivatives (its distances the function of x
    # and y they are): distances_t adds nothing. The Euclidean weight grad / d's
    # tangent -grad d' / d^2 is the op's with "grad" -grad d' / d.
    if distances_t is not None and distance == DISTANCES["euclidean"]:
        along_x, along_y = distance_matrix_backward_op(
            torch.where(distances == 0, 0, -grad * distances_t / distances), x, y, distances,
            distance, eps, backend)
        tangent_x, tangent_y = tangent_x + along_x, tangent_y + along_y
    return tangent_x, tangent_y


distance_matrix_backward_op.register_derivatives(setup_context=_matrix_backward_setup,
                                                 backward=_matrix_double_backward,
                                                 jvp=_matrix_backward_jvp)


@define_op("cnnk::batch_hard_mining", returns=tuple[Tensor, Tensor])
def batch_hard_mining_op(distances: Tensor, labels: Tensor, backend: str) -> Launch:
    """(positive_index, negative_index), int64 (N,): per anchor the hardest
    positive and negative, -1 where there is none."""
    _args.check_tensor(distances, "distances", ndim=2)
    N = distances.shape[0]
    if distances.shape[1] != N:
        raise ValueError(f"distances must be square, got {tuple(distances.shape)}")
    _check_labels(labels, N, distances)
    g = MiningGeometry(N)
    positive_index = labels.new_empty((N,))
    negative_index = labels.new_empty((N,))
    return Launch((positive_index, negative_index),
                  {"distances": distances, "labels": labels, "positive_index": positive_index,
                   "negative_index": negative_index},
                  lambda b: _ext.launchers(b, distances, _triton).batch_hard_mining(
                      g, distances, labels, positive_index, negative_index),
                  g.index_extent())


def _check_labels(labels, n: int, like: Tensor) -> None:
    _args.check_tensor(labels, "labels", ndim=1)
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor, got {labels.dtype}")
    if labels.device != like.device:
        raise ValueError(f"labels must be on embeddings's device {like.device}, got "
                         f"{labels.device}")
    if labels.shape[0] != n:
        raise ValueError(f"labels must hold one label per embedding ({n}), got "
                         f"{labels.shape[0]}")


def _reduction_code(reduction, size_average=None, reduce=None) -> int:
    """torch's reduction argument (and its legacy pair), with torch's errors."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce, emit_warning=True)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return REDUCTIONS[reduction]


def _distance_code(distance, allowed=tuple(DISTANCES)) -> int:
    _backend.check_choice("distance", distance, allowed)
    return DISTANCES[distance]


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0,
                        p: float = 2, eps: float = 1e-6, swap: bool = False,
                        size_average=None, reduce=None, reduction: str = "mean", *,
                        distance: str = "euclidean") -> Tensor:
    """``torch.nn.functional.triplet_margin_loss`` on cnnkernels' fused
    kernel: per triplet max(margin + d(a, p) - d(a, n), 0) (with ``swap``,
    d(a, n) is min(d(a, n), d(p, n))), then the reduction. (N, D) or (D,)
    inputs of one rank, broadcast against each other as torch does.
    ``distance`` (keyword-only): ``"euclidean"`` (torch's
    ||x - y + eps||_p, the default), ``"sqeuclidean"`` (||x - y||^2, the
    course's form) or ``"cosine"`` (1 - cos, norms clamped at eps)."""
    code = _reduction_code(reduction, size_average, reduce)
    distance_code = _distance_code(distance)
    margin, p, eps = _number(margin, "margin"), _number(p, "p"), _number(eps, "eps")
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    if not 0 < p < float("inf"):
        raise ValueError(f"p must be a positive finite number, got {p}")
    swap = _args.flag(swap, "swap")
    tensors = {"anchor": anchor, "positive": positive, "negative": negative}
    for name, t in tensors.items():
        _args.check_tensor(t, name, ndim=(1, 2))
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not anchor.dim() == positive.dim() == negative.dim():
        raise RuntimeError(
            f"The anchor, positive, and negative tensors are expected to have the same number "
            f"of dimensions, but got: anchor {anchor.dim()}D, positive {positive.dim()}D, and "
            f"negative {negative.dim()}D inputs")
    rows = [anchor, positive, negative]
    if not anchor.shape == positive.shape == negative.shape:
        # Broadcast views (torch's errors for sizes that do not broadcast).
        rows = torch.broadcast_tensors(*rows)
    if not anchor.dtype == positive.dtype == negative.dtype:
        dtype = torch.promote_types(torch.promote_types(anchor.dtype, positive.dtype),
                                    negative.dtype)
        rows = [t.to(dtype) for t in rows]
    if anchor.dim() == 1:
        rows = [t.reshape(1, -1) for t in rows]
    args = (*rows, None, None, margin, p, eps, swap,
            REDUCTIONS["none"] if anchor.dim() == 1 else code, distance_code,
            _backend.current_backend())
    if (code != REDUCTIONS["none"] and anchor.dim() == 2 and reverse_mode_only(rows)
            and _backend.resolve_backend(anchor.device, args[-1]) == "cpu"):
        return triplet_loss_with_gradients_op(*args)[0]
    loss = triplet_loss_op(*args)
    return loss.reshape(()) if anchor.dim() == 1 else loss


def pairwise_distance_matrix(x: Tensor, y: Optional[Tensor] = None, *,
                             distance: str = "euclidean", eps: float = COSINE_EPS) -> Tensor:
    """The (N, M) distances between the rows of x (N, D) and y (M, D) (y
    None: x against itself). ``"euclidean"`` equals ``torch.cdist(x, y)``
    (p = 2), ``"sqeuclidean"`` its square, both by direct differences,
    exact at zero distance (torch.cdist's default computes the Euclidean
    distance from ||x||^2 + ||y||^2 - 2 x.y, which cancels there);
    ``"cosine"``: 1 - x_i.y_j / (max(||x_i||, eps) max(||y_j||, eps)),
    ``1 - F.cosine_similarity(x[:, None], y[None], dim=-1, eps=eps)``
    (eps is read by the cosine only; its gradient at a clamped norm: the
    module docstring). Differentiable twice (the module docstring), and in
    forward mode."""
    code = _distance_code(distance, MATRIX_DISTANCES)
    eps = _number(eps, "eps")
    y = x if y is None else y
    return distance_matrix_op(x, y, code, eps, _backend.current_backend())


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 1.0, *,
                            distance: str = "euclidean", reduction: str = "mean",
                            eps: float = COSINE_EPS) -> Tensor:
    """Batch-hard triplet loss: for each anchor i of the batch (N, D), the
    hardest positive (the largest distance to another embedding of its
    label) and the hardest negative (the smallest distance to one of another
    label), ties to the lowest index; loss_i = max(margin + d_ip - d_in, 0).
    Half-precision embeddings are mined on float32 distances (the loss
    itself is computed in the input dtype, accumulated in float32).
    Anchors without a positive or a negative are excluded: their loss is 0
    (reduction "none") and the mean divides by the anchors included (0 when
    none is). ``distance``: "euclidean" (||x - y||), "sqeuclidean" or
    "cosine" (1 - cos, each norm clamped at ``eps``, which only the cosine
    reads: the mining and the loss clamp alike). The mining runs on the
    distance matrix kernel and the mining kernel; the loss and its gradient
    (to the chosen pairs only) on the triplet kernels."""
    code = _reduction_code(reduction)
    distance_code = _distance_code(distance, MATRIX_DISTANCES)
    margin = _number(margin, "margin")
    eps = _number(eps, "eps")
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    embeddings = _rows(embeddings, "embeddings")
    _check_labels(labels, embeddings.shape[0], embeddings)
    backend = _backend.current_backend()
    with torch.no_grad():
        # Half-precision embeddings are mined on float32 distances: rounded
        # to float16 (or bfloat16), distances a few ulps apart tie, and the
        # lowest index would win where the true hardest row is another one.
        mined = embeddings.detach()
        if mined.dtype in (torch.float16, torch.bfloat16):
            mined = mined.float()
        distances = distance_matrix_op(mined, mined, distance_code, eps, backend)
        positive_index, negative_index = batch_hard_mining_op(distances, labels, backend)
    # The triplet kernels add eps to the Euclidean differences (torch's
    # pairwise_distance); the matrix does not (torch.cdist), so neither does the loss.
    triplet_eps = eps if distance_code == DISTANCES["cosine"] else 0.0
    return triplet_loss_op(embeddings, embeddings, embeddings, positive_index, negative_index,
                           margin, 2.0, triplet_eps, False, code, distance_code, backend)
