"""gram_matrix against a plain float64 Gram (sum over the positions of
products of channel pairs) on every backend that runs here: values, exact
symmetry, the three normalisations, every layout (channels_last without a
copy), gradients. The tests every family gets come from tests/harness.py;
this module adds the Gram's own: symmetry, channel counts across the tile
edges, the symmetrised product, the op-level validation."""

import math
import random

import pytest
import torch
import torch.utils._python_dispatch
from conftest import backend_params, dtypes_for, interpreted
from harness import FamilySpec, Sample, common_tests
from reference import assert_close, float64_cpu, random_tensor

import cnnkernels as ck
import cnnkernels.ops.gram as gram_ops
from cnnkernels.ops.gram import (
    difference_dot_op,
    gram_matrix_backward_op,
    gram_matrix_op,
    scaled_difference_op,
    split_plan,
    style_loss_op,
)


def reference_gram(features: torch.Tensor, normalize: str = "none") -> torch.Tensor:
    """G[b, k, k'] = sum over positions of F[b, k, p] F[b, k', p] / norm
    (the course notes' formula) as a matrix product, which autocast runs in
    its lower precision like ours."""
    flat = features.flatten(2)
    gram = flat @ flat.transpose(1, 2)
    C, L = flat.shape[1], flat.shape[2]
    norm = {"none": 1, "hw": L, "chw": C * L}[normalize] if L else 1
    return gram / norm


def random_case(seed: int, tiny: bool) -> dict:
    """Channel counts on both sides of the tile edges (32 and 64 channels:
    the cpu's, Triton's and CUDA's tiles), odd planes, every layout, 3-D and
    4-D inputs."""
    rng = random.Random(seed)
    return dict(
        B=rng.choice((1, 2)),
        C=rng.choice((1, 3, 7, 65) if tiny else (1, 3, 13, 33, 64, 65, 130)),
        H=rng.choice((3, 5) if tiny else (5, 7, 13, 31)),
        W=rng.choice((2, 5) if tiny else (3, 9, 17)),
        layout=rng.choice(("contiguous", "channels_last", "noncontiguous", "flat")),
        normalize=rng.choice(("none", "hw", "chw")),
    )


def make_input(case, dtype, device, generator):
    shape = (case["B"], case["C"], case["H"], case["W"])
    x = random_tensor(shape, dtype, device, generator=generator)
    if case["layout"] == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if case["layout"] == "noncontiguous":
        wide = torch.empty((*shape[:3], 2 * shape[3]), dtype=dtype, device=device)
        wide[..., ::2] = x
        return wide[..., ::2]
    if case["layout"] == "flat":
        return x.flatten(2)
    return x


def run_case(device, backend, case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = make_input(case, dtype, device, generator).requires_grad_()
    with ck.use(backend=backend):
        gram = ck.gram_matrix(x, normalize=case["normalize"])
        grad_gram = random_tensor(gram.shape, dtype, device, generator=generator)
        gram.backward(grad_gram)
    x64 = float64_cpu(x).requires_grad_()
    expected = reference_gram(x64, case["normalize"])
    expected.backward(float64_cpu(grad_gram))
    length = case["H"] * case["W"]
    assert torch.equal(gram, gram.transpose(1, 2)), "the Gram is not exactly symmetric"
    assert_close(gram, expected.detach(), dtype, length, "gram")
    assert_close(x.grad, x64.grad, dtype, 2 * case["C"], "grad_features")


def reference_content_loss(a_content, a_generated):
    """The course's content cost: sum (a_C - a_G)^2 / (2 n_H n_W n_C) per
    image, summed over the batch."""
    return (a_content - a_generated).square().sum() / (2 * a_content[0].numel())


def reference_style_loss(features, target, normalize="course"):
    """The notes' style cost (or the tutorial's mse of normalised Grams), a
    loss computed in its inputs' precision under autocast, as ours."""
    with torch.autocast(features.device.type, enabled=False):
        if normalize == "course":
            plane = math.prod(features.shape[1:])
            return (reference_gram(features) - target).square().sum() / (2 * plane) ** 2
        gram = reference_gram(features, "chw")
        return torch.nn.functional.mse_loss(gram, target.expand(gram.shape))


def _samples():
    def inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 3, 4, 5), dtype, device, generator=generator),)

    def pair(dtype, device, generator, batch):
        return tuple(random_tensor((batch, 3, 4, 5), dtype, device, generator=generator)
                     for _ in range(2))

    def with_target(dtype, device, generator, batch):
        return (random_tensor((batch, 3, 4, 5), dtype, device, generator=generator),
                random_tensor((3, 3), dtype, device, generator=generator))

    def with_targets(dtype, device, generator, batch):
        return (random_tensor((batch, 3, 4, 5), dtype, device, generator=generator),
                random_tensor((batch, 3, 3), dtype, device, generator=generator))

    return (*(Sample(f"gram_{normalize}",
                     lambda x, normalize=normalize: ck.gram_matrix(x, normalize=normalize),
                     lambda x, normalize=normalize: reference_gram(x, normalize), inputs, 20)
              for normalize in ("none", "chw")),
            Sample("style_loss", ck.style_loss, reference_style_loss, with_target, 20 * 9),
            Sample("style_loss_per_image", ck.style_loss, reference_style_loss, with_targets,
                   20 * 9),
            Sample("style_loss_tutorial",
                   lambda x, t: ck.style_loss(x, t, normalize="tutorial"),
                   lambda x, t: reference_style_loss(x, t, "tutorial"), with_target, 20 * 9),
            Sample("content_loss", ck.content_loss,
                   lambda a, b: (a - b).square().sum() / 120, pair, 120))


def _op_calls(device, backend, dtype):
    generator = torch.Generator().manual_seed(61)
    x = random_tensor((2, 5, 9), dtype, device, generator=generator).requires_grad_()
    other = random_tensor((2, 5, 9), dtype, device, generator=generator).requires_grad_()
    grad_gram = random_tensor((2, 5, 5), dtype, device, generator=generator).requires_grad_()
    # A plane the CUDA and Triton plans split over L (two slices).
    long = random_tensor((1, 5, 1100), dtype, device, generator=generator).requires_grad_()
    return [
        (gram_matrix_op, (x, None, 0.5, backend)),
        (gram_matrix_op, (x, other, 0.5, backend)),
        (gram_matrix_op, (long, None, 0.5, backend)),
        (style_loss_op, (long, grad_gram[:1], 0.5, 0.25, True, backend)),
        (gram_matrix_backward_op, (grad_gram, x, 0.25, backend)),
        (style_loss_op, (x, grad_gram, 0.5, 0.25, True, backend)),
        # Without the residual it has no derivatives: inputs that need none.
        (style_loss_op, (x.detach(), grad_gram.detach(), 0.5, 0.25, False, backend)),
        (difference_dot_op, (x, other, x, other, 0.5, backend)),
        (difference_dot_op, (x, None, other, None, 0.5, backend)),
        (scaled_difference_op, (x, other, grad_gram[0, 0, 0].detach(), 2.0, backend)),
        (scaled_difference_op, (x, None, grad_gram[0, 0, 0].detach(), -1.0, backend)),
    ]


BAD_INPUTS = (
    ("style_target", lambda: ck.style_loss(torch.randn(2, 3, 4, 4), torch.randn(4, 4)),
     ValueError, "target_gram must have shape (3, 3)"),
    ("style_batch", lambda: ck.style_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 3)),
     ValueError, "target_gram must have shape (2, 3, 3)"),
    ("style_normalize", lambda: ck.style_loss(torch.randn(2, 3, 4), torch.randn(3, 3),
                                              normalize="none"), ValueError,
     "normalize must be one of"),
    ("style_op_target", lambda: style_loss_op(torch.randn(1, 2, 3), torch.randn(1, 3, 3), 1.0,
                                              1.0, False, "cpu"), ValueError,
     "target must have shape (1, 2, 2)"),
    ("style_op_dtype", lambda: style_loss_op(torch.randn(1, 2, 3), torch.randn(1, 2, 2).double(),
                                             1.0, 1.0, False, "cpu"), TypeError,
     "target must have features's dtype"),
    ("content_shapes", lambda: ck.content_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 4)),
     ValueError, "a_content and a_generated must have the same shape"),
    ("content_rank", lambda: ck.content_loss(torch.randn(2, 3), torch.randn(2, 3)), ValueError,
     "a_content must be 3-D or 4-D"),
    ("rank", lambda: ck.gram_matrix(torch.randn(4, 4)), ValueError,
     "features must be 3-D or 4-D"),
    ("integer", lambda: ck.gram_matrix(torch.ones(1, 2, 3, dtype=torch.int64)), TypeError,
     "features must be a floating-point tensor"),
    ("normalize", lambda: ck.gram_matrix(torch.randn(1, 2, 3), normalize="mean"), ValueError,
     "normalize must be one of"),
    ("other_shape", lambda: gram_matrix_op(torch.randn(1, 2, 3), torch.randn(1, 2, 4), 1.0,
                                           "cpu"), ValueError, "other must have shape (1, 2, 3)"),
    ("grad_shape", lambda: gram_matrix_backward_op(torch.randn(1, 3, 3), torch.randn(1, 2, 3),
                                                   1.0, "cpu"), ValueError,
     "grad_gram must have shape (1, 2, 2)"),
)

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=(dict(B=2, C=5, H=3, W=7, layout="channels_last", normalize="hw"),),
    samples=_samples(), op_calls=_op_calls, bad_inputs=BAD_INPUTS, seeds=(6, 24))

globals().update(common_tests(SPEC))


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_symmetrised_product_matches_reference(device, backend):
    """gram_matrix_op with ``other``: scale (F O^T + O F^T), the Gram's
    tangent and the backward's adjoint."""
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(3)
    x = random_tensor((2, 70, 11), dtype, device, generator=generator)
    other = random_tensor((2, 70, 11), dtype, device, generator=generator)
    result = gram_matrix_op(x, other, 0.5, backend)
    x64, other64 = float64_cpu(x), float64_cpu(other)
    expected = 0.5 * (x64 @ other64.transpose(1, 2) + other64 @ x64.transpose(1, 2))
    assert torch.equal(result, result.transpose(1, 2))
    assert_close(result, expected, dtype, 22, "symmetrised product")


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_empty_plane_gives_zeros(device, backend):
    x = torch.empty((2, 3, 0, 4), device=device, dtype=dtypes_for(device, backend)[0])
    with ck.use(backend=backend):
        gram = ck.gram_matrix(x, normalize="chw")
    assert torch.equal(gram, torch.zeros(2, 3, 3, dtype=x.dtype, device=device))


def test_channels_last_is_read_without_a_copy():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    from cnnkernels.ops.gram import flat_features

    assert flat_features(x).data_ptr() == x.data_ptr()


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous", "mixed"])
def test_content_loss_matches_reference(device, backend, layout):
    """Every layout (mixed: one operand channels_last), sizes across the
    chunks of the reduction, values and both gradients."""
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(11)
    shape = (2, 5, 31, 57)  # 17670 elements: three chunks of 8192
    case = dict(B=2, C=5, H=31, W=57, layout=layout)
    content = make_input({**case, "layout": "contiguous" if layout == "mixed" else layout},
                         dtype, device, generator).requires_grad_()
    generated = make_input({**case, "layout": "channels_last" if layout == "mixed" else layout},
                           dtype, device, generator).requires_grad_()
    with ck.use(backend=backend):
        loss = ck.content_loss(content, generated)
        loss.backward()
    c64, g64 = float64_cpu(content).requires_grad_(), float64_cpu(generated).requires_grad_()
    expected = reference_content_loss(c64, g64)
    expected.backward()
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, expected.detach(), dtype, content.numel(), "content loss")
    assert_close(content.grad, c64.grad, dtype, 1, "grad a_content")
    assert_close(generated.grad, g64.grad, dtype, 1, "grad a_generated")
    assert tuple(shape) == tuple(content.shape)


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("normalize", ["course", "tutorial"])
def test_style_loss_matches_reference(device, backend, normalize):
    """Both normalisations, a per-image target, channels_last features, C
    across the tile edge; values and both gradients."""
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(5)
    x = make_input(dict(B=2, C=70, H=5, W=3, layout="channels_last"), dtype, device,
                   generator).requires_grad_()
    target = random_tensor((2, 70, 70), dtype, device, generator=generator).requires_grad_()
    with ck.use(backend=backend):
        loss = ck.style_loss(x, target, normalize=normalize)
        loss.backward()
    x64, t64 = float64_cpu(x).requires_grad_(), float64_cpu(target).requires_grad_()
    expected = reference_style_loss(x64, t64, normalize)
    expected.backward()
    assert_close(loss, expected.detach(), dtype, 70 * 70 * 15, "style loss")
    assert_close(x.grad, x64.grad, dtype, 70 * 15, "grad features")
    assert_close(target.grad, t64.grad, dtype, 15, "grad target")


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("normalize", ["course", "tutorial"])
@pytest.mark.parametrize("target_kind", ["shared", "per_image"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_style_loss_matches_reference(device, backend, normalize, target_kind, layout):
    """The fused operator through the public function: odd sizes, C across
    the 32-channel tiles and the cpu's micro-panels, a target that is not
    symmetric, NCHW and channels_last, shared (C, C) and per-image targets;
    loss and both gradients against float64 torch. A shared target is the
    style-transfer case, a constant: the features' gradient alone, for an
    incoming gradient of 0.5 (which the cpu folds into the Gram backward)."""
    dtype = dtypes_for(device, backend)[0]
    tiny = interpreted(device, backend)
    B, C, H, W = (2, 35, 3, 5) if tiny else (2, 77, 13, 9)
    generator = torch.Generator().manual_seed(17)
    x = make_input(dict(B=B, C=C, H=H, W=W, layout=layout), dtype, device,
                   generator).requires_grad_()
    shape = (C, C) if target_kind == "shared" else (B, C, C)
    target = random_tensor(shape, dtype, device, generator=generator)
    if normalize == "tutorial":  # targets of the Grams' size, so neither term dominates
        target = target / (C * H * W) ** 0.5
    constant = target_kind == "shared"
    target.requires_grad_(not constant)
    wrt, grad = ((x,), torch.tensor(0.5, dtype=dtype, device=device)) if constant else (
        (x, target), None)
    with ck.use(backend=backend):
        loss = ck.style_loss(x, target, normalize=normalize)
        grads = torch.autograd.grad(loss, wrt, grad)
    x64, t64 = float64_cpu(x).requires_grad_(), float64_cpu(target).requires_grad_(not constant)
    expected = reference_style_loss(x64, t64, normalize)
    expected_grads = torch.autograd.grad(expected, (x64,) if constant else (x64, t64),
                                         None if grad is None else float64_cpu(grad))
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, expected.detach(), dtype, C * C * H * W, "style loss")
    assert_close(grads[0], expected_grads[0], dtype, C * H * W, "grad features")
    if not constant:
        assert_close(grads[1], expected_grads[1], dtype, H * W, "grad target")


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_style_loss_op_residual(device, backend):
    """The operator's second output: the residual s F F^T - T with both
    triangles (T not symmetric), and an empty tensor when not kept; the
    loss from the unnormalised sum of squares."""
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(23)
    x = random_tensor((2, 33, 7), dtype, device, generator=generator)
    target = random_tensor((2, 33, 33), dtype, device, generator=generator)
    loss, residual = style_loss_op(x, target, 0.5, 0.125, True, backend)
    x64, t64 = float64_cpu(x), float64_cpu(target)
    expected = 0.5 * x64 @ x64.transpose(1, 2) - t64
    assert_close(residual, expected, dtype, 7, "residual")
    assert_close(loss, 0.125 * expected.square().sum(), dtype, 33 * 33 * 7, "loss")
    unkept_loss, unkept = style_loss_op(x, target, 0.5, 0.125, False, backend)
    assert unkept.numel() == 0
    assert torch.equal(unkept_loss, loss)


def split_params():
    """(device, backend, dtype) for the backends that split the forward's
    reduction over L (the cpu splits its own way, tested above)."""
    return [pytest.param(*p.values, dtype, id=f"{p.id}-{str(dtype).removeprefix('torch.')}",
                         marks=p.marks)
            for p in backend_params() if p.values[1] != "cpu" for dtype in dtypes_for(*p.values)]


def check_split_forward(device, backend, dtype, shape, layout):
    """gram_matrix (plain and with ``other``) and style_loss (residual kept
    and not) on features the plan splits over L: values against float64
    torch, an exactly symmetric Gram, bitwise equal results on a second run
    (the slices added in a fixed order) and the same loss with and without
    the residual."""
    B, C, H, W = shape
    generator = torch.Generator().manual_seed(sum(shape))
    case = dict(B=B, C=C, H=H, W=W, layout=layout)
    x = make_input(case, dtype, device, generator).flatten(2)
    other = make_input(case, dtype, device, generator).flatten(2)
    L = H * W
    assert gram_ops._split(backend, x)[0] > 1, "the case does not exercise the split"
    x64, o64 = float64_cpu(x), float64_cpu(other)

    gram = gram_matrix_op(x, None, 0.5, backend)
    assert torch.equal(gram, gram.transpose(1, 2)), "the Gram is not exactly symmetric"
    assert torch.equal(gram, gram_matrix_op(x, None, 0.5, backend)), "not deterministic"
    assert_close(gram, 0.5 * x64 @ x64.transpose(1, 2), dtype, L, "gram")
    cross = gram_matrix_op(x, other, 0.5, backend)
    assert torch.equal(cross, cross.transpose(1, 2))
    assert torch.equal(cross, gram_matrix_op(x, other, 0.5, backend)), "not deterministic"
    assert_close(cross, 0.5 * (x64 @ o64.transpose(1, 2) + o64 @ x64.transpose(1, 2)), dtype,
                 2 * L, "symmetrised product")

    # A non-symmetric target of the normalised Gram's size (~ L^-1/2).
    target = random_tensor((B, C, C), dtype, device, generator=generator).mul(L ** -0.5)
    loss, residual = style_loss_op(x, target, 1.0 / L, 0.25, True, backend)
    unkept_loss, unkept = style_loss_op(x, target, 1.0 / L, 0.25, False, backend)
    expected = x64 @ x64.transpose(1, 2) / L - float64_cpu(target)
    assert_close(residual, expected, dtype, L, "residual")
    assert_close(loss, 0.25 * expected.square().sum(), dtype, C * C * L, "style loss")
    assert unkept.numel() == 0
    assert torch.equal(unkept_loss, loss), "the loss depends on keeping the residual"
    again, again_residual = style_loss_op(x, target, 1.0 / L, 0.25, True, backend)
    assert torch.equal(again, loss) and torch.equal(again_residual, residual), \
        "the style loss is not deterministic"


@pytest.mark.parametrize(("device", "backend", "dtype"), split_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_split_forward_matches_reference(device, backend, dtype, layout):
    """Few upper tiles, a long plane: the plan's rule splits L (C across the
    32-channel tiles, two images, slices of 576 positions, the last one
    shorter)."""
    check_split_forward(device, backend, dtype, (2, 40, 42, 50), layout)


@pytest.mark.parametrize(("device", "backend", "dtype"), split_params())
def test_split_forward_many_short_slices(device, backend, dtype, monkeypatch):
    """The minimum slice lowered to one alignment step: six slices of 128
    positions (the last one 27), three images, C off every tile edge, both
    layouts."""
    monkeypatch.setattr(gram_ops, "SPLIT_MIN_SLICE", gram_ops.SPLIT_ALIGN)
    for layout in ("contiguous", "channels_last"):
        check_split_forward(device, backend, dtype, (3, 7, 23, 29), layout)


def test_split_plan():
    """The rule: enough slices to reach the target block count, none shorter
    than the minimum, whole alignment steps, every slice non-empty; no split
    when the tiles fill the GPU or the plane is short."""
    assert split_plan(1, 512, 256, 64) == (1, 256)  # VGG conv5_1: too short to split
    assert split_plan(8, 512, 4096, 64) == (1, 4096)  # 288 blocks already
    assert split_plan(1, 64, 65536, 64) == (128, 512)  # VGG conv1_1: L / 512 slices
    for B, C, L, tile in ((1, 64, 65536, 32), (2, 40, 2100, 32), (3, 7, 5000, 64),
                          (1, 130, 1155, 64)):
        splits, slice_len = split_plan(B, C, L, tile)
        side = -(-C // tile)
        assert 1 < splits <= -(-gram_ops.SPLIT_TARGET_BLOCKS // (B * side * (side + 1) // 2))
        assert slice_len % gram_ops.SPLIT_ALIGN == 0 and slice_len >= gram_ops.SPLIT_MIN_SLICE
        assert (splits - 1) * slice_len < L <= splits * slice_len


class _OpsCalled(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operators called and the shapes of their outputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, tuple) else (out,)
        self.calls.append((str(func.overloadpacket),
                           [tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor)]))
        return out


@pytest.mark.parametrize("grad", [False, True])
def test_style_loss_never_writes_the_gram(grad):
    """style_loss runs the fused operator, not the Gram's: no cnnk op but
    style_loss in the forward, and without derivatives no (B, C, C) output
    at all (the residual is empty)."""
    x = torch.randn(2, 40, 6, 6, requires_grad=grad)
    target = torch.randn(40, 40)
    with ck.use(backend="cpu"), _OpsCalled() as mode:
        ck.style_loss(x, target)
    cnnk_ops = [name for name, _ in mode.calls if name.startswith("cnnk.")]
    assert cnnk_ops == ["cnnk.style_loss"]
    if not grad:
        created = [shape for name, shapes in mode.calls if name == "cnnk.style_loss"
                   for shape in shapes]
        assert (2, 40, 40) not in created and (40, 40) not in created
