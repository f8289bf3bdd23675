"""max_pool2d, avg_pool2d, adaptive_avg_pool2d and adaptive_max_pool2d
against torch in float64 on every backend that runs here: outputs, indices
(exactly, ties and NaN included), gradients, memory formats. The tests every
family gets come from tests/harness.py; this module adds pooling's own: ties
and NaN, disjoint windows, global pooling, indices only when needed, the
float16/bfloat16 rounding of the cpu backend, the op-level validation."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, dtypes_for
from harness import FamilySpec, Sample, common_tests
from reference import assert_close, float64_cpu, random_tensor

import cnnkernels as ck
from cnnkernels import _args
from cnnkernels.ops.pool2d import (
    adaptive_avg_pool2d_backward_op,
    adaptive_avg_pool2d_op,
    adaptive_max_pool2d_backward_op,
    adaptive_max_pool2d_op,
    avg_pool2d_backward_op,
    avg_pool2d_op,
    max_pool2d_backward_op,
    max_pool2d_gather_op,
    max_pool2d_op,
)

KINDS = ("max", "avg", "adaptive_avg", "adaptive_max")


def random_case(seed: int, tiny: bool) -> dict:
    """Random pooling parameters: odd sizes, windows hanging off the edge
    (ceil_mode, padding), dilation, every layout, unbatched inputs."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    case = dict(
        kind=kind, N=rng.choice((1, 2) if tiny else (1, 2, 3)),
        C=rng.choice((1, 3) if tiny else (1, 3, 5, 16)),
        H=rng.choice((5, 7) if tiny else (5, 7, 13, 31)),
        W=rng.choice((5, 6) if tiny else (6, 9, 13, 17)),
        layout=rng.choice(("contiguous", "channels_last", "noncontiguous")),
        unbatched=rng.random() < 0.15,
    )
    if kind.startswith("adaptive"):
        case["output_size"] = (rng.randint(1, case["H"] + 2),
                               rng.choice((None, rng.randint(1, case["W"] + 2))))
        return case
    case.update(
        kernel_size=kernel,
        stride=rng.choice((None, 1, 2, (rng.randint(1, 3), rng.randint(1, 3)))),
        padding=(rng.randint(0, kernel[0] // 2), rng.randint(0, kernel[1] // 2)),
        ceil_mode=rng.random() < 0.5,
    )
    if kind == "max":
        case["dilation"] = (rng.choice((1, 2)), rng.choice((1, 2)))
    else:
        case["count_include_pad"] = rng.random() < 0.5
        case["divisor_override"] = rng.choice((None, None, 3, -2))
    # Windows larger than the input are an error in torch too: keep them fitting.
    for axis, size in ((0, "H"), (1, "W")):
        extent = case.get("dilation", (1, 1))[axis] * (kernel[axis] - 1) + 1
        case[size] = max(case[size], extent)
    return case


def pool(module, case, x, return_indices=False):
    """Call ``module``'s pooling function (torch.nn.functional or cnnkernels)
    for the case."""
    kind = case["kind"]
    if kind == "adaptive_avg":
        return module.adaptive_avg_pool2d(x, case["output_size"])
    if kind == "adaptive_max":
        return module.adaptive_max_pool2d(x, case["output_size"], return_indices)
    if kind == "avg":
        return module.avg_pool2d(x, case["kernel_size"], case["stride"], case["padding"],
                                 case["ceil_mode"], case["count_include_pad"],
                                 case["divisor_override"])
    return module.max_pool2d(x, case["kernel_size"], case["stride"], case["padding"],
                             case["dilation"], case["ceil_mode"], return_indices)


def make_input(case, dtype, device, generator, values=None):
    shape = (case["N"], case["C"], case["H"], case["W"])
    if values is not None:
        x = values(shape).to(device=device, dtype=dtype)
    else:
        x = random_tensor(shape, dtype, device, generator=generator)
    if case["layout"] == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif case["layout"] == "noncontiguous":
        wide = torch.empty((*shape[:3], 2 * shape[3]), dtype=dtype, device=device)
        wide[..., ::2] = x
        x = wide[..., ::2]
    return x[0] if case["unbatched"] else x


def window_size(case) -> int:
    """Largest number of elements one output sums (the reduction length)."""
    if case["kind"].startswith("adaptive"):
        sizes = case["output_size"]
        rows, cols = sizes if isinstance(sizes, tuple) else (sizes, sizes)
        cols = case["W"] if cols is None else cols
        return (-(-case["H"] // rows) + 1) * (-(-case["W"] // cols) + 1)
    kernel = case["kernel_size"]
    return kernel[0] * kernel[1] if isinstance(kernel, tuple) else kernel * kernel


def run_case(device, backend, case, dtype, seed, values=None):
    generator = torch.Generator().manual_seed(seed)
    x = make_input(case, dtype, device, generator, values).requires_grad_()
    is_max = case["kind"].endswith("max")
    with ck.use(backend=backend):
        result = pool(ck, case, x, return_indices=is_max)
        y, indices = result if is_max else (result, None)
        grad_y = random_tensor(y.shape, dtype, device, generator=generator)
        y.backward(grad_y)

    x64 = float64_cpu(x).requires_grad_()
    expected = pool(F, case, x64, return_indices=is_max)
    y64, indices64 = expected if is_max else (expected, None)
    y64.backward(float64_cpu(grad_y))

    if is_max:
        # A max is a copy: exact, NaN where torch has NaN.
        assert torch.equal(indices.cpu(), indices64), "indices differ from torch's"
        assert indices.dtype == torch.int64
        torch.testing.assert_close(float64_cpu(y), y64, rtol=0, atol=0, equal_nan=True)
    else:
        assert_close(y, y64.detach(), dtype, window_size(case), "output")
    assert _args.is_channels_last(y) == _args.is_channels_last(y64), \
        "output memory format differs from torch's"
    if y.numel() > 0:
        assert_close(x.grad, x64.grad, dtype, window_size(case), "grad_input")


def _samples():
    """Each public function on a small input, windows hanging off the edges."""
    def inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 2, 5, 4), dtype, device, generator=generator),)

    return (
        Sample("max", lambda x: ck.max_pool2d(x, 3, 2, 1, ceil_mode=True),
               lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), inputs, 9),
        Sample("avg", lambda x: ck.avg_pool2d(x, (3, 2), 1, (1, 0), count_include_pad=False),
               lambda x: F.avg_pool2d(x, (3, 2), 1, (1, 0), count_include_pad=False), inputs, 6),
        Sample("adaptive_avg", lambda x: ck.adaptive_avg_pool2d(x, (3, 3)),
               lambda x: F.adaptive_avg_pool2d(x, (3, 3)), inputs, 9),
        Sample("adaptive_max", lambda x: ck.adaptive_max_pool2d(x, (2, 3)),
               lambda x: F.adaptive_max_pool2d(x, (2, 3)), inputs, 9),
    )


def _op_calls(device, backend, dtype):
    generator = torch.Generator().manual_seed(61)
    x = random_tensor((2, 3, 7, 6), dtype, device, generator=generator).requires_grad_()
    window = ([3, 2], [2, 2], [1, 1], [1, 2], True)
    y, indices = max_pool2d_op(x.detach(), *window, True, backend)
    grad_y = random_tensor(y.shape, dtype, device, generator=generator)
    avg = ([3, 2], [2, 1], [1, 1], True, False, -3)
    avg_y = avg_pool2d_op(x.detach(), *avg, backend)
    adaptive_y, adaptive_indices = adaptive_max_pool2d_op(x.detach(), [3, 4], True, backend)
    return [
        (max_pool2d_op, (x, *window, True, backend)),
        (max_pool2d_backward_op, (grad_y, indices, x.detach(), *window, backend)),
        (max_pool2d_gather_op, (x.detach(), indices, backend)),
        (adaptive_max_pool2d_op, (x, [3, 4], True, backend)),
        (adaptive_max_pool2d_backward_op, (torch.randn_like(adaptive_y), adaptive_indices,
                                           x.detach(), backend)),
        (avg_pool2d_op, (x, *avg, backend)),
        (avg_pool2d_backward_op, (torch.randn_like(avg_y), x.detach(), *avg, backend)),
        (adaptive_avg_pool2d_op, (x, [3, 4], backend)),
        (adaptive_avg_pool2d_backward_op, (torch.randn_like(adaptive_y), x.detach(), backend)),
    ]


BAD_INPUTS = (
    ("rank", lambda: ck.max_pool2d(torch.randn(4, 4), 2), ValueError,
     "input must be 3-D or 4-D"),
    ("integer", lambda: ck.avg_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2), TypeError,
     "input must be a floating-point tensor"),
    ("channels", lambda: ck.max_pool2d(torch.randn(2, 0, 4, 4), 2), ValueError,
     "non-zero channels, height and width"),
    ("kernel_zero", lambda: ck.max_pool2d(torch.randn(1, 1, 4, 4), 0), ValueError,
     "kernel_size must be >= 1"),
    ("stride_zero", lambda: ck.avg_pool2d(torch.randn(1, 1, 4, 4), 2, 0), ValueError,
     "stride must be >= 1"),
    ("dilation_zero", lambda: ck.max_pool2d(torch.randn(1, 1, 4, 4), 2, dilation=0), ValueError,
     "dilation must be >= 1"),
    ("padding_over_half", lambda: ck.max_pool2d(torch.randn(1, 1, 8, 8), 3, padding=2),
     ValueError, "padding must be between 0 and half the kernel size"),
    ("avg_padding_over_half", lambda: ck.avg_pool2d(torch.randn(1, 1, 8, 8), 2, padding=(0, 2)),
     ValueError, "padding must be between 0 and half the kernel size"),
    ("output_too_small", lambda: ck.max_pool2d(torch.randn(1, 1, 2, 2), 3), ValueError,
     "is too small"),
    ("divisor_zero", lambda: ck.avg_pool2d(torch.randn(1, 1, 4, 4), 2, divisor_override=0),
     ValueError, "divisor_override must be a non-zero int"),
    ("output_size_negative", lambda: ck.adaptive_avg_pool2d(torch.randn(1, 1, 4, 4), (-1, 2)),
     ValueError, "output_size must hold non-negative ints"),
    ("output_size_triple", lambda: ck.adaptive_max_pool2d(torch.randn(1, 1, 4, 4), (1, 2, 3)),
     TypeError, "output_size must be an int, None or a pair"),
    ("kernel_triple", lambda: ck.avg_pool2d(torch.randn(1, 1, 4, 4), (1, 2, 3)), TypeError,
     "kernel_size must be an int or a pair"),
)

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=tuple(dict(kind=kind, N=2, C=3, H=7, W=6, layout="channels_last",
                           unbatched=False, kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
                           ceil_mode=True, dilation=(1, 2), count_include_pad=False,
                           divisor_override=None, output_size=(3, 4)) for kind in KINDS),
    samples=_samples(), op_calls=_op_calls, bad_inputs=BAD_INPUTS, seeds=(16, 48))

globals().update(common_tests(SPEC))



@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("kind", ["max", "adaptive_max"])
def test_ties_and_nan_pick_torch_indices(device, backend, kind):
    """Integer-valued inputs make ties everywhere (the first maximum wins);
    NaNs propagate (the last NaN wins); all -inf windows return their first
    element."""
    def values(shape):
        generator = torch.Generator().manual_seed(21)
        v = torch.randint(-2, 3, shape, generator=generator).double()
        flat = v.view(-1)
        flat[torch.randperm(flat.numel(), generator=generator)[:4]] = float("nan")
        v[:, :, :2, :2] = float("-inf")
        return v

    case = dict(kind=kind, N=2, C=2, H=7, W=7, layout="contiguous", unbatched=False,
                kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True,
                output_size=(3, 3))
    run_case(device, backend, case, dtypes_for(device, backend)[0], seed=21, values=values)


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_disjoint_windows_fast_path(device, backend, kind):
    """stride == kernel_size (the common 2x2/2): one window per input element,
    and elements no window reads (odd sizes) get a zero gradient."""
    case = dict(kind=kind, N=2, C=3, H=9, W=7, layout="contiguous", unbatched=False,
                kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False,
                count_include_pad=True, divisor_override=None)
    run_case(device, backend, case, dtypes_for(device, backend)[0], seed=31)


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_global_average_pool(device, backend):
    """The 1x1 adaptive average that ends ResNet, MobileNet and Inception."""
    case = dict(kind="adaptive_avg", N=2, C=5, H=7, W=7, layout="channels_last",
                unbatched=False, output_size=1)
    run_case(device, backend, case, dtypes_for(device, backend)[0], seed=41)


LAYOUTS = ("contiguous", "channels_last", "noncontiguous")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["adaptive_avg", "adaptive_max"])
@pytest.mark.parametrize("size", [7, 40])
def test_cpu_global_pooling_every_layout(kind, dtype, layout, size):
    """The cpu backend's global (1x1) pooling: a lane-wise reduction of each
    plane (a 40x40 plane is read in pieces), or along the channels for
    channels_last; indices, ties and gradients as torch's."""
    case = dict(kind=kind, N=2, C=6, H=size, W=size + 1, layout=layout, unbatched=False,
                output_size=1)
    run_case("cpu", "cpu", case, dtype, seed=47)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("window", [
    dict(kind="max", kernel_size=2, stride=2, padding=0),
    dict(kind="max", kernel_size=3, stride=4, padding=1),   # gaps no window reads
    dict(kind="max", kernel_size=(3, 2), stride=(3, 5), padding=(1, 0)),
    dict(kind="adaptive_max", output_size=(3, 2)),           # 9 x 8: sizes divide
])
def test_cpu_max_backward_disjoint_windows_every_layout(window, layout):
    """Disjoint windows (stride >= kernel, or adaptive windows whose size
    divides the input): the cpu max backward gathers each input element from
    its one window instead of scattering."""
    case = dict(N=2, C=5, H=9, W=8, layout=layout, unbatched=False, dilation=1,
                ceil_mode=False, **window)
    run_case("cpu", "cpu", case, torch.float32, seed=53)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("window", [
    dict(kernel_size=5, stride=1, padding=2, dilation=1),    # SPP-like: separable rows
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
])
def test_ties_and_nan_overlapping_windows_every_layout(window, layout):
    """Overlapping windows, where the cpu forward reduces rows then columns
    (planes) or runs along the channels (channels_last): the first maximum
    in row-major window order still wins a tie and the last NaN wins."""
    def values(shape):
        generator = torch.Generator().manual_seed(59)
        v = torch.randint(-1, 2, shape, generator=generator).double()
        flat = v.view(-1)
        flat[torch.randperm(flat.numel(), generator=generator)[:6]] = float("nan")
        v[:, :, :3, :3] = float("-inf")
        return v

    case = dict(kind="max", N=2, C=4, H=11, W=10, layout=layout, unbatched=False,
                ceil_mode=True, **window)
    run_case("cpu", "cpu", case, torch.float32, seed=59, values=values)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [
    dict(kind="max", kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False),
    dict(kind="max", kernel_size=7, stride=1, padding=3, dilation=1, ceil_mode=False),
    dict(kind="max", kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False),
    dict(kind="avg", kernel_size=3, stride=1, padding=1, ceil_mode=True,
         count_include_pad=False, divisor_override=None),
    dict(kind="adaptive_avg", output_size=1),
    dict(kind="adaptive_max", output_size=1),
    dict(kind="adaptive_avg", output_size=(5, 3)),
    dict(kind="adaptive_max", output_size=(5, 3)),
], ids=lambda case: "-".join(str(v) for v in case.values()))
def test_cpu_results_do_not_depend_on_the_thread_count(case, layout):
    """The cpu kernels run serially below a work threshold and in dynamically
    taken chunks above it; the sums run in an order the geometry fixes, so
    one thread and two give the same bits (outputs, indices, gradients)."""
    case = dict(N=4, C=16, H=48, W=47, layout=layout, unbatched=False, **case)
    generator = torch.Generator().manual_seed(61)
    x = make_input(case, torch.float32, "cpu", generator)
    grad = None
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            with ck.use(backend="cpu"):
                out = pool(ck, case, xg, return_indices=case["kind"].endswith("max"))
                y = out[0] if isinstance(out, tuple) else out
                grad = torch.randn(y.shape, generator=generator) if grad is None else grad
                y.backward(grad)
            results.append((out, xg.grad))
    finally:
        torch.set_num_threads(threads)
    (out1, grad1), (out2, grad2) = results
    for a, b in zip(out1 if isinstance(out1, tuple) else (out1,),
                    out2 if isinstance(out2, tuple) else (out2,), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grad1, grad2)


@pytest.mark.parametrize("divisor", [-2, 1, 7])
def test_any_nonzero_divisor_override(divisor):
    """torch divides by any non-zero divisor_override, negative too."""
    case = dict(kind="avg", N=1, C=2, H=6, W=5, layout="contiguous", unbatched=False,
                kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True,
                divisor_override=divisor)
    run_case("cpu", "cpu", case, torch.float64, seed=43)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_types_round_like_torch(dtype):
    """The cpu backend's float16/bfloat16 conversions (csrc/include/cnnk/
    cpu_types.h), over every bit pattern: a 1x1 max is a load and a store (an
    exact round trip, NaN kept), a 1x1 average by 3 rounds x / 3 once, as
    torch's CPU kernel does (float arithmetic, one rounding)."""
    x = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x.reshape(1, 1, 256, 256)
    with ck.use(backend="cpu"):
        torch.testing.assert_close(ck.max_pool2d(x, 1), x, rtol=0, atol=0, equal_nan=True)
        third = ck.avg_pool2d(x, 1, divisor_override=3)
    torch.testing.assert_close(third, F.avg_pool2d(x, 1, divisor_override=3), rtol=0, atol=0,
                               equal_nan=True)


def test_no_indices_without_grad_or_return_indices():
    """Inference does not pay for indices; asking for them or for a gradient
    does."""
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        _, indices = max_pool2d_op(x, [3, 3], [2, 2], [0, 0], [1, 1], False, False, "cpu")
    assert indices.numel() == 0
    y, i = ck.max_pool2d(x, 2, return_indices=True)
    assert i.shape == y.shape


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_gather_reads_nan_outside_the_plane(device, backend):
    """max_pool2d_gather (max pooling's double backward) at indices no max
    pooling gives: NaN, never a read outside the plane."""
    x = random_tensor((1, 2, 3, 4), dtypes_for(device, backend)[0], device)
    indices = torch.tensor([[[[0, 11, -1, 12]], [[5, 2**40, 3, 7]]]], device=device)
    gathered = max_pool2d_gather_op(x, indices, backend)
    flat = x.flatten(2)
    expected = torch.stack([flat[0, 0, [0, 11, 0, 0]], flat[0, 1, [5, 0, 3, 7]]])[None, :, None]
    expected[0, 0, 0, 2:] = float("nan")
    expected[0, 1, 0, 1] = float("nan")
    torch.testing.assert_close(gathered, expected, rtol=0, atol=0, equal_nan=True)


def _window_elements(size, out, kernel, stride, padding, dilation):
    """The input positions along one axis that output o's window holds."""
    return [[o * stride - padding + i * dilation for i in range(kernel)
             if 0 <= o * stride - padding + i * dilation < size] for o in range(out)]


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("window", [
    dict(kernel_size=2, stride=2, padding=0, dilation=1),  # disjoint
    dict(kernel_size=3, stride=2, padding=1, dilation=1),  # overlapping, padded
    dict(kernel_size=(3, 2), stride=(1, 3), padding=1, dilation=2),  # dilated, column gaps
], ids=["disjoint", "overlapping", "dilated"])
def test_max_backward_takes_only_indices_inside_their_window(device, backend, channels_last,
                                                             window):
    """The backward given indices directly (a third inside the window, a
    third anywhere in the plane, a third outside it): an output's gradient
    goes to its index only when that is an element of its window, summed
    over windows, on the cpu gather (channels_last) and scatter (planes) and
    on the GPU. Checked against a loop over the windows in float64."""
    dtype = torch.float64 if backend != "triton" or device == "cpu" else torch.float32
    N, C, H, W = 2, 3, 7, 6
    k, s, p, d = ((v, v) if isinstance(v, int) else v for v in
                  (window["kernel_size"], window["stride"], window["padding"],
                   window["dilation"]))
    rows = _window_elements(H, (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1,
                            k[0], s[0], p[0], d[0])
    cols = _window_elements(W, (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1,
                            k[1], s[1], p[1], d[1])
    rng = random.Random(7)
    indices = torch.empty(N, C, len(rows), len(cols), dtype=torch.int64)
    for n, c, i, j in np.ndindex(*indices.shape):
        pick = rng.randrange(3)
        indices[n, c, i, j] = (rng.choice(rows[i]) * W + rng.choice(cols[j]) if pick == 0 else
                               rng.randrange(H * W) if pick == 1 else
                               rng.choice([-1, -H * W, H * W, H * W + 5]))
    grad_y = torch.randn(indices.shape, dtype=torch.float64)
    expected = torch.zeros(N, C, H * W, dtype=torch.float64)
    for n, c, i, j in np.ndindex(*indices.shape):
        at = int(indices[n, c, i, j])
        if at in {h * W + w for h in rows[i] for w in cols[j]}:
            expected[n, c, at] += grad_y[n, c, i, j]
    x = torch.zeros(N, C, H, W, dtype=dtype, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        indices = indices.to(memory_format=torch.channels_last)
        grad_y = grad_y.to(memory_format=torch.channels_last)
    grad = max_pool2d_backward_op(grad_y.to(device, dtype), indices.to(device), x, list(k),
                                  list(s), list(p), list(d), False, backend)
    tolerance = 0 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(grad.double().cpu().reshape(N, C, H * W), expected,
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("size", [262, 522], ids=["blocks", "blocks_own_windows"])
def test_max_backward_of_large_planes_on_the_cpu(size):
    """The cpu plane scatter runs blocks of about 4096 outputs and builds
    each block's windows past 2^16 outputs a plane: a 131^2 and a 261^2
    output plane (overlapping windows: several windows may pick one
    element) against torch."""
    x = torch.randn(1, 2, size, size, dtype=torch.float64).round(decimals=1)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    grad_y = torch.randn(1, 2, size // 2, size // 2, dtype=torch.float64)
    with ck.use(backend="cpu"):
        (grad,) = torch.autograd.grad(ck.max_pool2d(ours, 3, 2, 1), ours, grad_y)
    (expected,) = torch.autograd.grad(F.max_pool2d(theirs, 3, 2, 1), theirs, grad_y)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_third_derivative_of_max_pooling_raises():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with ck.use(backend="cpu"):
        y = ck.max_pool2d(x, 2)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="not three times"):
            torch.autograd.grad(gg.sum(), x)


def test_backend_for_other_device_raises():
    with ck.use(backend="cuda"), pytest.raises(RuntimeError,
                                               match="backend 'cuda' runs CUDA tensors"):
        ck.max_pool2d(torch.randn(1, 1, 4, 4), 2)


def test_direct_op_call_is_validated():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="kernel_size takes 2 values"):
        torch.ops.cnnk.avg_pool2d(x, [3], [1, 1], [0, 0], False, True, None, "cpu")
    with pytest.raises(ValueError, match="indices must be int64"):
        torch.ops.cnnk.max_pool2d_backward(torch.randn(1, 2, 3, 3),
                                           torch.empty(0, 0, 0, 0, dtype=torch.int64), x,
                                           [2, 2], [2, 2], [0, 0], [1, 1], False, "cpu")
