"""metric: the triplet margin loss, distance matrices and batch-hard mining,
through the common tests of tests/harness.py (first and second derivatives
of every sample among them); then the family's own: batch-hard's
derivatives, second derivatives against torch's, swap ties, broadcasting,
torch's errors, cosine zero rows, batch-hard mining's choices, exclusions
and ties, the module twin."""

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, dtypes_for, interpreted
from harness import FamilySpec, Sample, common_tests
from reference import assert_close, float64_cpu, random_tensor

import cnnkernels as ck
from cnnkernels.ops.metric import (
    COSINE_EPS,
    DISTANCES,
    REDUCTIONS,
    batch_hard_mining_op,
    distance_matrix_backward_op,
    distance_matrix_op,
    route_rows_op,
    triplet_loss_backward_op,
    triplet_loss_op,
    triplet_loss_with_gradients_op,
)


def reference_distance(x, y, distance="euclidean", p=2.0, eps=1e-6):
    """The distance of rows x and y in plain torch ops (float64)."""
    if distance == "cosine":
        norms = x.norm(dim=-1).clamp_min(eps) * y.norm(dim=-1).clamp_min(eps)
        return 1 - (x * y).sum(-1) / norms
    if distance == "sqeuclidean":
        return (x - y).square().sum(-1)
    return F.pairwise_distance(x, y, p=p, eps=eps)


def reference_triplet(a, p, n, margin=1.0, norm=2.0, eps=1e-6, swap=False, reduction="mean",
                      distance="euclidean"):
    """torch's F.triplet_margin_loss for the Euclidean distance; the same
    formula over reference_distance for the others."""
    if distance == "euclidean":
        return F.triplet_margin_loss(a, p, n, margin=margin, p=norm, eps=eps, swap=swap,
                                     reduction=reduction)
    d_ap = reference_distance(a, p, distance, eps=eps)
    d_neg = reference_distance(a, n, distance, eps=eps)
    if swap:
        d_neg = torch.minimum(d_neg, reference_distance(p, n, distance, eps=eps))
    loss = (margin + d_ap - d_neg).clamp_min(0)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def reference_pair(x, y, distance, eps=COSINE_EPS):
    """The Euclidean, squared or cosine distance of rows x and y (the square
    root clamped away from 0, where an excluded anchor's stand-in pair is its
    own row: its gradient is masked, and must not be NaN)."""
    if distance == "cosine":
        return 1 - F.cosine_similarity(x, y, dim=-1, eps=eps)
    squared = (x - y).square().sum(-1)
    return squared if distance == "sqeuclidean" else squared.clamp_min(1e-300).sqrt()


def reference_batch_hard(e, labels, margin=1.0, distance="euclidean", reduction="mean",
                         distances=None):
    """Batch-hard mining in plain torch: hardest positive by argmax (the
    first maximum), hardest negative by argmin, over the float64 distances
    (or ``distances``); the loss recomputed from the chosen rows (so the
    gradient reaches them only)."""
    with torch.no_grad():
        d = reference_pair(e[:, None], e[None], distance) if distances is None else distances
        same = labels[:, None] == labels[None]
        eye = torch.eye(len(labels), dtype=torch.bool)
        positives, negatives = same & ~eye, ~same
        hardest_positive = torch.where(positives, d, -torch.inf).argmax(1)
        hardest_negative = torch.where(negatives, d, torch.inf).argmin(1)
        included = positives.any(1) & negatives.any(1)
    loss = (margin + reference_pair(e, e[hardest_positive], distance)
            - reference_pair(e, e[hardest_negative], distance)).clamp_min(0)
    loss = torch.where(included, loss, 0)
    if reduction == "none":
        return loss
    return loss.sum() / (included.sum().clamp_min(1) if reduction == "mean" else 1)


def random_case(seed: int, tiny: bool) -> dict:
    rng = random.Random(seed)
    return dict(
        kind=rng.choice(("triplet", "triplet", "matrix", "batch_hard")),
        N=rng.choice((1, 7, 13) if tiny else (1, 7, 33, 70)),
        M=rng.choice((5, 9) if tiny else (5, 31)),
        D=rng.choice((3, 9) if tiny else (2, 13, 64, 130)),
        p=rng.choice((2.0, 1.0, 3.0, 0.5)),
        swap=rng.choice((False, True)),
        reduction=rng.choice(("mean", "sum", "none")),
        distance=rng.choice(("euclidean", "sqeuclidean", "cosine")),
        margin=rng.choice((1.0, 0.3)),
        broadcast=rng.choice((False, False, True)),
        labels=rng.choice((2, 3, 5)),
        # The backward's gradient 1 (loss.backward()): a reduced loss on the
        # cpu then returns the gradients its forward computed.
        unit_grad=rng.choice((False, True)),
    )


def _inputs(case, dtype, device, generator):
    shape = (case["N"], case["D"])
    tensors = [random_tensor(shape, dtype, device, generator=generator) for _ in range(3)]
    if case["broadcast"]:
        tensors[1] = tensors[1][:1]  # one positive for every anchor
    return [t.requires_grad_() for t in tensors]


def run_case(device, backend, case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    kind = case["kind"]
    if kind == "matrix":
        x = random_tensor((case["N"], case["D"]), dtype, device, generator=generator)
        y = random_tensor((case["M"], case["D"]), dtype, device, generator=generator)
        x.requires_grad_()
        y.requires_grad_()
        distance = case["distance"]
        with ck.use(backend=backend):
            out = ck.pairwise_distance_matrix(x, y, distance=distance)
            grad = random_tensor(out.shape, dtype, device, generator=generator)
            out.backward(grad)
        x64, y64 = float64_cpu(x).requires_grad_(), float64_cpu(y).requires_grad_()
        if distance == "cosine":
            expected = reference_pair(x64[:, None], y64[None], distance)
        else:
            expected = torch.cdist(x64, y64) ** (2 if distance == "sqeuclidean" else 1)
        expected.backward(float64_cpu(grad))
        assert_close(out, expected.detach(), dtype, case["D"], "distances")
        assert_close(x.grad, x64.grad, dtype, case["M"] * case["D"], "grad x")
        assert_close(y.grad, y64.grad, dtype, case["N"] * case["D"], "grad y")
        return
    if kind == "batch_hard":
        e = random_tensor((case["N"], case["D"]), dtype, device, generator=generator)
        e.requires_grad_()
        labels = torch.randint(0, case["labels"], (case["N"],), generator=generator)
        distance = case["distance"]
        settings = dict(distance=distance, reduction=case["reduction"])
        low = dtype in (torch.float16, torch.bfloat16)
        with ck.use(backend=backend):
            loss = ck.batch_hard_triplet_loss(e, labels.to(device), case["margin"], **settings)
            loss.sum().backward()
            # 16-bit embeddings are mined on float32 distances
            distances = ck.pairwise_distance_matrix(e.detach().float() if low else e.detach(),
                                                    distance=distance)
        e64 = float64_cpu(e).requires_grad_()
        # 16-bit values are close together: float32 distances tie where
        # float64 ones do not, so the reference mines on ours then (the
        # matrix has its own cases), else on its own.
        expected = reference_batch_hard(e64, labels, case["margin"], **settings,
                                        distances=float64_cpu(distances) if low else None)
        expected.sum().backward()
        assert_close(loss, expected.detach(), dtype, case["D"], "batch-hard loss")
        assert_close(e.grad, e64.grad, dtype, case["N"], "grad embeddings")
        return
    a, p, n = _inputs(case, dtype, device, generator)
    settings = dict(margin=case["margin"], swap=case["swap"], reduction=case["reduction"])
    with ck.use(backend=backend):
        loss = ck.triplet_margin_loss(a, p, n, p=case["p"], distance=case["distance"],
                                      **settings)
        grad = (torch.ones_like(loss) if case.get("unit_grad") else
                random_tensor(loss.shape, dtype, device, generator=generator))
        loss.backward(grad)
    a64, p64, n64 = (float64_cpu(t).requires_grad_() for t in (a, p, n))
    expected = reference_triplet(a64, p64, n64, norm=case["p"], distance=case["distance"],
                                 **settings)
    expected.backward(float64_cpu(grad))
    assert loss.shape == expected.shape and loss.dtype == dtype
    length = case["D"] * (case["N"] if case["reduction"] != "none" else 1)
    assert_close(loss, expected.detach(), dtype, length, "loss")
    for t, t64, name in ((a, a64, "anchor"), (p, p64, "positive"), (n, n64, "negative")):
        assert_close(t.grad, t64.grad, dtype, case["N"] * case["D"], f"grad {name}")


def _samples():
    def triplet(dtype, device, generator, batch):
        return tuple(random_tensor((batch, 6), dtype, device, generator=generator)
                     for _ in range(3))

    def pair(dtype, device, generator, batch):
        return (random_tensor((batch, 4), dtype, device, generator=generator),
                random_tensor((3, 4), dtype, device, generator=generator))

    return (
        Sample("triplet", ck.triplet_margin_loss, F.triplet_margin_loss, triplet, 18),
        Sample("triplet_p1_swap_sum",
               lambda a, p, n: ck.triplet_margin_loss(a, p, n, 0.5, 1, swap=True,
                                                      reduction="sum"),
               lambda a, p, n: F.triplet_margin_loss(a, p, n, 0.5, 1, swap=True,
                                                     reduction="sum"), triplet, 18),
        Sample("triplet_cosine_none",
               lambda a, p, n: ck.triplet_margin_loss(a, p, n, reduction="none",
                                                      distance="cosine"),
               lambda a, p, n: reference_triplet(a, p, n, reduction="none", distance="cosine"),
               triplet, 6),
        Sample("distance_matrix", ck.pairwise_distance_matrix,
               lambda x, y: reference_pair(x[:, None], y[None], "euclidean"), pair, 4),
        Sample("distance_matrix_sqeuclidean",
               lambda x, y: ck.pairwise_distance_matrix(x, y, distance="sqeuclidean"),
               lambda x, y: reference_pair(x[:, None], y[None], "sqeuclidean"), pair, 4),
        Sample("distance_matrix_cosine",
               lambda x, y: ck.pairwise_distance_matrix(x, y, distance="cosine"),
               lambda x, y: reference_pair(x[:, None], y[None], "cosine"), pair, 4),
    )


def _op_calls(device, backend, dtype):
    generator = torch.Generator().manual_seed(61)
    a, p, n = (random_tensor((5, 7), dtype, device, generator=generator).requires_grad_()
               for _ in range(3))
    index = torch.tensor([1, -1, 0, 4, 2], device=device)
    labels = torch.tensor([0, 1, 0, 1, 1], device=device)
    none, mean = REDUCTIONS["none"], REDUCTIONS["mean"]
    settings = (1.0, 2.0, 1e-6, True, mean, DISTANCES["euclidean"], backend)
    distances = distance_matrix_op(a.detach(), n.detach(), 0, 0.0, backend)
    cosines = distance_matrix_op(a.detach(), n.detach(), DISTANCES["cosine"], 1e-8, backend)
    return [
        (triplet_loss_op, (a, p, n, None, None, *settings)),
        (triplet_loss_op, (a, p, n, None, None, 0.5, 1.5, 1e-6, False, none,
                           DISTANCES["cosine"], backend)),
        (triplet_loss_op, (a, p, n, index, index.flip(0), *settings)),
        (triplet_loss_with_gradients_op, (a, p, n, None, None, *settings)),
        (triplet_loss_with_gradients_op, (a, p, n, index, index.flip(0), 0.5, 1.5, 1e-6, False,
                                          none, DISTANCES["sqeuclidean"], backend)),
        (triplet_loss_backward_op, (torch.ones((), dtype=dtype, device=device), a.detach(),
                                    p.detach(), n.detach(), None, None, *settings)),
        (route_rows_op, (a.detach(), index, 6, backend)),
        (distance_matrix_op, (a, p, DISTANCES["euclidean"], 0.0, backend)),
        (distance_matrix_op, (a, p[:3], DISTANCES["sqeuclidean"], 0.0, backend)),
        (distance_matrix_op, (a, p[:3], DISTANCES["cosine"], 1e-8, backend)),
        (distance_matrix_backward_op, (distances, a.detach(), n.detach(), distances, 0, 0.0,
                                       backend)),
        (distance_matrix_backward_op, (distances, a.detach(), n.detach(), cosines,
                                       DISTANCES["cosine"], 1e-8, backend)),
        (batch_hard_mining_op, (distances, labels, backend)),
    ]


X = torch.randn(4, 3)
BAD_INPUTS = (
    ("ranks", lambda: ck.triplet_margin_loss(X, X[0], X), RuntimeError,
     "expected to have the same number of dimensions, but got: anchor 2D, positive 1D"),
    ("rank3", lambda: ck.triplet_margin_loss(X[None], X[None], X[None]), ValueError,
     "anchor must be 1-D or 2-D"),
    ("shapes", lambda: ck.triplet_margin_loss(X, torch.randn(3, 3), X), RuntimeError,
     "must match"),
    ("margin", lambda: ck.triplet_margin_loss(X, X, X, margin=0), ValueError,
     "margin must be greater than 0, got 0"),
    ("p_zero", lambda: ck.triplet_margin_loss(X, X, X, p=0), ValueError,
     "p must be a positive finite number, got 0"),
    ("p_negative", lambda: ck.triplet_margin_loss(X, X, X, p=-1), ValueError,
     "p must be a positive finite number"),
    ("reduction", lambda: ck.triplet_margin_loss(X, X, X, reduction="avg"), ValueError,
     "avg is not a valid value for reduction"),
    ("distance", lambda: ck.triplet_margin_loss(X, X, X, distance="manhattan"), ValueError,
     "distance must be one of"),
    ("integer", lambda: ck.triplet_margin_loss(X.long(), X.long(), X.long()), TypeError,
     "anchor must be a floating-point tensor"),
    ("swap", lambda: ck.triplet_margin_loss(X, X, X, swap=1), TypeError,
     "swap must be a bool"),
    ("matrix_sizes", lambda: ck.pairwise_distance_matrix(X, torch.randn(2, 4)), ValueError,
     "x and y must have rows of one size"),
    ("matrix_rank", lambda: ck.pairwise_distance_matrix(X[0]), ValueError, "x must be 2-D"),
    ("matrix_distance", lambda: ck.pairwise_distance_matrix(X, distance="cityblock"),
     ValueError, "distance must be one of 'euclidean', 'sqeuclidean', 'cosine'"),
    ("matrix_eps", lambda: ck.pairwise_distance_matrix(X, distance="cosine", eps="tiny"),
     TypeError, "eps must be a number"),
    ("batch_hard_eps", lambda: ck.batch_hard_triplet_loss(X, torch.zeros(4, dtype=torch.int64),
                                                          distance="cosine", eps=None),
     TypeError, "eps must be a number"),
    ("labels_length", lambda: ck.batch_hard_triplet_loss(X, torch.zeros(3, dtype=torch.int64)),
     ValueError, "labels must hold one label per embedding (4), got 3"),
    ("labels_dtype", lambda: ck.batch_hard_triplet_loss(X, torch.zeros(4)), TypeError,
     "labels must be an int64 tensor"),
    ("labels_rank", lambda: ck.batch_hard_triplet_loss(X, torch.zeros(4, 1, dtype=torch.int64)),
     ValueError, "labels must be 1-D"),
    ("embeddings_rank", lambda: ck.batch_hard_triplet_loss(X[0], torch.zeros(3,
                                                                             dtype=torch.int64)),
     ValueError, "embeddings must be 2-D"),
    ("batch_hard_margin", lambda: ck.batch_hard_triplet_loss(X, torch.zeros(4,
                                                                            dtype=torch.int64),
                                                             -1.0), ValueError,
     "margin must be greater than 0"),
    ("index_length", lambda: triplet_loss_op(X, X, X, torch.zeros(3, dtype=torch.int64),
                                             torch.zeros(3, dtype=torch.int64), 1.0, 2.0, 0.0,
                                             False, 1, 0, "cpu"), ValueError,
     "positive_index must hold one index per triplet (4)"),
    ("grad_shape", lambda: triplet_loss_backward_op(torch.ones(4), X, X, X, None, None, 1.0,
                                                    2.0, 0.0, False, 1, 0, "cpu"), ValueError,
     "grad must be 0-D"),
)

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=(dict(kind="triplet", N=9, M=5, D=13, p=2.0, swap=True, reduction="mean",
                      distance="euclidean", margin=1.0, broadcast=False, labels=3),
                 dict(kind="triplet", N=9, M=5, D=13, p=1.0, swap=False, reduction="none",
                      distance="cosine", margin=1.0, broadcast=True, labels=3),
                 dict(kind="matrix", N=9, M=5, D=13, p=2.0, swap=False, reduction="none",
                      distance="euclidean", margin=1.0, broadcast=False, labels=3),
                 dict(kind="matrix", N=9, M=5, D=13, p=2.0, swap=False, reduction="none",
                      distance="cosine", margin=1.0, broadcast=False, labels=3),
                 dict(kind="batch_hard", N=12, M=5, D=13, p=2.0, swap=False, reduction="mean",
                      distance="euclidean", margin=1.0, broadcast=False, labels=3),
                 dict(kind="batch_hard", N=12, M=5, D=13, p=2.0, swap=False, reduction="sum",
                      distance="cosine", margin=0.3, broadcast=False, labels=3)),
    samples=_samples(), op_calls=_op_calls, bad_inputs=BAD_INPUTS, seeds=(10, 40))

globals().update(common_tests(SPEC))

_GRADIENT_BACKENDS = [p for p in backend_params() if torch.float64 in dtypes_for(*p.values)]


@pytest.mark.parametrize(("device", "backend"), _GRADIENT_BACKENDS)
@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck],
                         ids=lambda check: check.__name__)
def test_batch_hard_derivatives_match_finite_differences(check, device, backend, distance):
    """The mining is piecewise constant: away from ties the loss is the
    chosen pairs' hinge, whose first and second derivatives (the mined
    indices constants) the checks compare with finite differences; forward
    mode too, but not on the interpreter."""
    generator = torch.Generator().manual_seed(4)
    e = torch.randn(7, 3, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2], device=device)
    fast = interpreted(device, backend)
    modes = ({"check_forward_ad": not fast} if check is torch.autograd.gradcheck
             else {"check_fwd_over_rev": not fast})
    with ck.use(backend=backend):
        assert check(lambda x: ck.batch_hard_triplet_loss(x, labels, 2.0, distance=distance),
                     (e,), fast_mode=fast, **modes)


@pytest.mark.parametrize(("device", "backend"), _GRADIENT_BACKENDS)
@pytest.mark.parametrize(("p", "swap", "reduction"), [(2.0, True, "mean"), (3.0, False, "none")])
def test_second_derivatives_match_torch(device, backend, p, swap, reduction):
    """Double backward as F.triplet_margin_loss's: the gradient of
    (the rows' gradients . v) along the rows and the incoming gradient."""
    generator = torch.Generator().manual_seed(9)
    rows = [torch.randn(5, 4, generator=generator, dtype=torch.float64) for _ in range(4)]
    a, pos, neg, v = (t.to(device) for t in rows)
    outer = torch.randn(5 if reduction == "none" else (), generator=generator,
                        dtype=torch.float64).to(device)

    def second(loss_fn, a, pos, neg, outer, v):
        inputs = [t.clone().requires_grad_() for t in (a, pos, neg, outer)]
        loss = loss_fn(*inputs[:3], margin=2.0, p=p, swap=swap, reduction=reduction)
        (grad_a,) = torch.autograd.grad(loss, inputs[0], inputs[3], create_graph=True)
        return torch.autograd.grad((grad_a * v).sum(), inputs)

    with ck.use(backend=backend):
        ours = second(ck.triplet_margin_loss, a, pos, neg, outer, v)
    expected = second(F.triplet_margin_loss, *map(float64_cpu, (a, pos, neg, outer, v)))
    for got, want, name in zip(ours, expected, ("anchor", "positive", "negative", "grad"),
                               strict=True):
        assert_close(got, want, torch.float64, 20, f"second derivative along {name}")


@pytest.mark.parametrize(("reduction", "distance", "swap"),
                         [("mean", "euclidean", True), ("sum", "cosine", False),
                          ("mean", "sqeuclidean", False)])
def test_gradients_computed_by_the_forward(reduction, distance, swap):
    """On the cpu a reduced loss that records a backward computes its rows'
    gradients in the forward's pass; a backward of gradient 1 returns them,
    once (a retained graph's next backward recomputes), and every other
    backward (another gradient, a recorded graph) runs the backward op."""
    generator = torch.Generator().manual_seed(17)
    rows = [torch.randn(9, 6, generator=generator).requires_grad_() for _ in range(3)]
    settings = dict(margin=2.0, swap=swap, reduction=reduction)
    with ck.use(backend="cpu"):
        loss = ck.triplet_margin_loss(*rows, distance=distance, **settings)
        assert "triplet_loss_with_gradients" in type(loss.grad_fn).__name__
        first = torch.autograd.grad(loss, rows, retain_graph=True)
        second = torch.autograd.grad(loss, rows, retain_graph=True)
        scaled = torch.autograd.grad(loss, rows, torch.tensor(3.0), retain_graph=True)
        (recorded,) = torch.autograd.grad(loss, rows[0], create_graph=True)
        (recorded_second,) = torch.autograd.grad(recorded.square().sum(), rows[1])
    rows64 = [float64_cpu(t).requires_grad_() for t in rows]
    expected = reference_triplet(*rows64, distance=distance, **settings)
    expected_grads = torch.autograd.grad(expected, rows64, create_graph=True)
    (expected_second,) = torch.autograd.grad(expected_grads[0].square().sum(), rows64[1])
    for name, got, factor in (("first", first, 1), ("second", second, 1), ("scaled", scaled, 3)):
        for g, want, row in zip(got, expected_grads, ("anchor", "positive", "negative"),
                                strict=True):
            assert_close(g, factor * want.detach(), torch.float32, 54, f"{name} grad {row}")
    assert_close(recorded, expected_grads[0].detach(), torch.float32, 54, "recorded grad")
    assert_close(recorded_second, expected_second, torch.float32, 54, "second derivative")


def test_gradients_op_forward_mode_and_transforms_match_the_loss_op():
    """The reverse mode's op differentiates as cnnk::triplet_loss in forward
    mode and under torch.func (its gradient outputs take no tangent)."""
    generator = torch.Generator().manual_seed(23)
    a, p, n, t = (torch.randn(6, 5, generator=generator, dtype=torch.float64) for _ in range(4))
    settings = (1.0, 2.0, 1e-6, True, REDUCTIONS["mean"], DISTANCES["euclidean"], "cpu")
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(a, t)
        fused = triplet_loss_with_gradients_op(dual, p, n, None, None, *settings)
        plain = triplet_loss_op(dual, p, n, None, None, *settings)
        tangent = torch.autograd.forward_ad.unpack_dual(fused[0]).tangent
        assert torch.autograd.forward_ad.unpack_dual(fused[1]).tangent is None
        torch.testing.assert_close(tangent, torch.autograd.forward_ad.unpack_dual(plain).tangent)
    fused_grad = torch.func.grad(
        lambda x: triplet_loss_with_gradients_op(x, p, n, None, None, *settings)[0])(a)
    plain_grad = torch.func.grad(lambda x: triplet_loss_op(x, p, n, None, None, *settings))(a)
    torch.testing.assert_close(fused_grad, plain_grad)


def test_gradients_in_the_forward_only_where_they_pay():
    """The backend that computes them is the cpu's, for a reduced loss whose
    backward will be recorded; not without grad, for reduction none, or on
    another backend."""
    rows = [torch.randn(4, 3).requires_grad_() for _ in range(3)]
    with ck.use(backend="cpu"):
        assert "with_gradients" not in type(
            ck.triplet_margin_loss(*rows, reduction="none").grad_fn).__name__
        with torch.no_grad():
            assert ck.triplet_margin_loss(*rows).grad_fn is None
    with ck.use(backend="triton"):
        assert "with_gradients" not in type(ck.triplet_margin_loss(*rows).grad_fn).__name__


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_swap_tie_splits_the_gradient(device, backend):
    """d(a, n) == d(p, n) exactly (p = n mirrored through a... here: p == a),
    so torch's minimum gives each half of the gradient."""
    dtype = dtypes_for(device, backend)[0]
    a = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=dtype, device=device)
    p = a.clone().requires_grad_()
    n = torch.tensor([[1.0, 1.5], [0.5, 0.0]], dtype=dtype, device=device).requires_grad_()
    a.requires_grad_()
    with ck.use(backend=backend):
        loss = ck.triplet_margin_loss(a, p, n, margin=3.0, swap=True)
        ours = torch.autograd.grad(loss, (a, p, n))
    a64, p64, n64 = (float64_cpu(t).requires_grad_() for t in (a, p, n))
    expected = torch.autograd.grad(F.triplet_margin_loss(a64, p64, n64, margin=3.0, swap=True),
                                   (a64, p64, n64))
    for grad, expected_grad in zip(ours, expected, strict=True):
        assert_close(grad, expected_grad, dtype, 2, "gradient at a swap tie")


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_unbatched_and_broadcast_inputs(device, backend):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(8)
    a = random_tensor((5,), dtype, device, generator=generator).requires_grad_()
    p = random_tensor((5,), dtype, device, generator=generator)
    n = random_tensor((3, 1), dtype, device, generator=generator).requires_grad_()
    with ck.use(backend=backend):
        single = ck.triplet_margin_loss(a, p, p.flip(0), reduction="none")
        broadcast = ck.triplet_margin_loss(a[None], p[None], n, margin=4.0)
        grads = torch.autograd.grad(broadcast, (a, n))
    assert single.shape == ()
    assert_close(single, F.triplet_margin_loss(*map(float64_cpu, (a, p, p.flip(0))),
                                               reduction="none"), dtype, 5, "unbatched")
    a64, n64 = float64_cpu(a).requires_grad_(), float64_cpu(n).requires_grad_()
    expected = F.triplet_margin_loss(a64[None], float64_cpu(p)[None], n64, margin=4.0)
    assert_close(broadcast, expected.detach(), dtype, 15, "broadcast loss")
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, (a64, n64)), strict=True):
        assert_close(grad, expected_grad, dtype, 15, "broadcast gradient")


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_batch_hard_mining_choices(device, backend):
    """Ties to the lowest index, the anchor never its own positive, -1 for
    an anchor without positive or negative; excluded anchors give 0 and
    the mean counts the included ones."""
    dtype = dtypes_for(device, backend)[0]
    points = torch.tensor([[0.0], [1.0], [-1.0], [3.0], [2.0]], dtype=dtype, device=device)
    labels = torch.tensor([0, 0, 0, 1, 7], device=device)
    with ck.use(backend=backend):
        distances = ck.pairwise_distance_matrix(points)
        positive, negative = batch_hard_mining_op(distances, labels, backend)
        losses = ck.batch_hard_triplet_loss(points, labels, 1.0, reduction="none")
        mean = ck.batch_hard_triplet_loss(points, labels, 1.0)
    # Anchor 0: positives 1 and 2 both at distance 1 -> 1; negatives 4 (2), 3 (3) -> 4;
    # anchor 4: negatives 1 and 3 both at distance 1 -> 1.
    assert positive.tolist() == [1, 2, 1, -1, -1]
    assert negative.tolist() == [4, 4, 4, 4, 1]
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected[0] = 1 + 1 - 2
    expected[1] = max(0.0, 1 + 2 - 1)
    expected[2] = max(0.0, 1 + 2 - 3)
    assert_close(losses, expected, dtype, 1, "batch-hard losses")
    assert_close(mean, expected.sum() / 3, dtype, 3, "mean over the included anchors")


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_hard_mines_half_precision_on_float32_distances(device, backend, dtype):
    """Positives at distances 1 and 1.0002 from the anchor round to the same
    float16/bfloat16 distance; mined on float32 distances, the farther one
    (row 2, not the lower index 1) is the hardest and takes the gradient."""
    if dtype not in dtypes_for(device, backend):
        pytest.skip(f"{backend} on {device} does not compute {dtype}")
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0205], [-1.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1], device=device)
    distances = torch.cdist(points.to(dtype).double(), points.to(dtype).double())
    assert distances[0, 2] > distances[0, 1]
    assert distances[0, 2].to(dtype) == distances[0, 1].to(dtype)
    embeddings = points.to(dtype).to(device).requires_grad_()
    with ck.use(backend=backend):
        losses = ck.batch_hard_triplet_loss(embeddings, labels, 1.0, reduction="none")
    losses[0].backward()
    grad = embeddings.grad.float().cpu()
    assert grad[2].abs().sum() > 0 and grad[1].abs().sum() == 0


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_cosine_zero_rows(device, backend):
    """A zero row is at distance 1 from every row (its norm clamped at
    eps); its gradient is F.cosine_similarity's, and the other side gets
    none from it. The clamp is the triplet loss's: the batch-hard loss on
    the cosine equals triplet_margin_loss(distance="cosine") on the mined
    rows with the same eps."""
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(12)
    x = random_tensor((4, 5), dtype, device, generator=generator)
    y = random_tensor((3, 5), dtype, device, generator=generator)
    x[1] = 0
    y[2] = 0
    x.requires_grad_()
    y.requires_grad_()
    with ck.use(backend=backend):
        out = ck.pairwise_distance_matrix(x, y, distance="cosine", eps=1e-3)
        grad = random_tensor(out.shape, dtype, device, generator=generator)
        out.backward(grad)
    x64, y64 = float64_cpu(x).requires_grad_(), float64_cpu(y).requires_grad_()
    expected = reference_pair(x64[:, None], y64[None], "cosine", eps=1e-3)
    expected.backward(float64_cpu(grad))
    assert (out[1].cpu() == 1).all() and (out[:, 2].cpu() == 1).all()
    assert_close(out, expected.detach(), dtype, 5, "distances")
    assert_close(x.grad, x64.grad, dtype, 15, "grad x")
    assert_close(y.grad, y64.grad, dtype, 20, "grad y")
    with ck.use(backend=backend):
        empty_rows = ck.pairwise_distance_matrix(x[:, :0], y[:, :0], distance="cosine")
    assert (empty_rows.cpu() == 1).all()  # 1 - F.cosine_similarity's 0

    embeddings = torch.cat([x.detach(), y.detach()]).requires_grad_()
    labels = torch.tensor([0, 1, 0, 1, 2, 0, 2], device=device)
    with ck.use(backend=backend):
        losses = ck.batch_hard_triplet_loss(embeddings, labels, 0.5, distance="cosine",
                                            eps=1e-3, reduction="none")
        distances = ck.pairwise_distance_matrix(embeddings, distance="cosine", eps=1e-3)
        positive, negative = batch_hard_mining_op(distances, labels, backend)
        triplets = ck.triplet_margin_loss(embeddings, embeddings[positive],
                                          embeddings[negative], 0.5, eps=1e-3,
                                          distance="cosine", reduction="none")
    assert (positive >= 0).all() and (negative >= 0).all()
    assert_close(losses, float64_cpu(triplets), dtype, 5, "batch-hard against triplet")


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_route_rows_sums_in_index_order(device, backend):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(2)
    rows = random_tensor((40, 5), dtype, device, generator=generator)
    index = torch.randint(-1, 6, (40,), generator=generator).to(device)
    out = route_rows_op(rows, index, 7, backend)
    expected = torch.zeros(7, 5, dtype=torch.float64)
    for i, r in enumerate(index.tolist()):
        if r >= 0:
            expected[r] += float64_cpu(rows[i])
    assert_close(out, expected, dtype, 40, "routed rows")


def test_module_twin_matches_torch():
    generator = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(6, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    ours = ck.nn.TripletMarginLoss(margin=0.7, p=1.0, swap=True, reduction="sum")
    theirs = torch.nn.TripletMarginLoss(margin=0.7, p=1.0, swap=True, reduction="sum")
    assert isinstance(ours, torch.nn.TripletMarginLoss)
    with ck.use(backend="cpu"):
        assert_close(ours(a, p, n), theirs(a, p, n), torch.float64, 24, "module")
