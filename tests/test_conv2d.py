"""cnnkernels.conv2d against torch.nn.functional.conv2d in float64, on every
backend that runs here: forward, grad_input, grad_weight, grad_bias, the
fused epilogue (activations and residual, with grad_residual), layouts,
double backward, autocast. The tests every family gets come from
tests/harness.py; this module adds conv2d's own: the split weight-gradient
reduction, unbatched input, every epilogue on every algorithm, silu at
extreme values, the op-level validation, the algorithm router."""

import importlib
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, dtypes_for
from harness import FamilySpec, Sample, common_tests
from reference import (
    assert_close,
    conv_inputs,
    float64_cpu,
    output_gradient,
    random_tensor,
    tolerance,
)

import cnnkernels as ck
from cnnkernels import _args
from cnnkernels._ext import Activation
from cnnkernels.ops.conv2d import (
    _ALGORITHM_KERNELS,
    Conv2dGeometry,
    conv2d_activation_grad_op,
    conv2d_grad_input_op,
    conv2d_grad_weight_op,
    conv2d_op,
    route,
)

# The module (cnnkernels.ops exports the function conv2d under the same name).
conv2d_ops = importlib.import_module("cnnkernels.ops.conv2d")

ACTIVATIONS = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu}
RESIDUAL_LAYOUTS = (None, "contiguous", "channels_last", "noncontiguous")


def random_case(seed: int, tiny: bool) -> dict:
    """Random convolution parameters; odd sizes, every padding form, groups
    up to depthwise, strides and dilations up to 3. Sizes are drawn so the
    output is never empty."""
    rng = random.Random(seed)
    groups = rng.choice((1, 1, 2, 3))
    in_per_group = rng.choice((1, 2, 3) if tiny else (1, 2, 3, 5, 7))
    depthwise = rng.random() < 0.2
    out_per_group = 1 if depthwise else rng.choice((1, 2, 3) if tiny else (1, 2, 4, 5, 9))
    if depthwise:
        in_per_group = 1
        groups = rng.choice((2, 3, 4))
    R, S = rng.choice((1, 2, 3, 5)), rng.choice((1, 3, 5))
    stride = (rng.choice((1, 2, 3)), rng.choice((1, 2)))
    dilation = (rng.choice((1, 2)), rng.choice((1, 1, 3)))
    padding_kind = rng.choice(("int", "pair", "same", "valid"))
    if padding_kind == "same":
        stride = (1, 1)
        padding = "same"
    elif padding_kind == "valid":
        padding = "valid"
    elif padding_kind == "int":
        padding = rng.choice((0, 1, 2))
    else:
        padding = (rng.choice((0, 1, 2)), rng.choice((0, 1, 3)))
    extent = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
    spatial = (5, 7) if tiny else (7, 13, 31)
    H = max(extent[0], rng.choice(spatial))
    W = max(extent[1], rng.choice(spatial))
    return dict(
        N=rng.choice((1, 2) if tiny else (1, 2, 3)),
        C=in_per_group * groups, K=out_per_group * groups, H=H, W=W, R=R, S=S,
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=rng.random() < 0.7, activation=rng.choice(tuple(ACTIVATIONS)),
        layout=rng.choice(("contiguous", "channels_last", "noncontiguous", "weight_channels_last")),
        residual=rng.choice(RESIDUAL_LAYOUTS),
    )


def make_residual(layout, shape, dtype, device, generator):
    """A residual of the output's shape in ``layout`` (None: no residual)."""
    if layout is None:
        return None
    if layout == "noncontiguous":  # every other column of a wider tensor
        wide = random_tensor((*shape[:3], 2 * shape[3]), dtype, device, generator=generator)
        return wide[..., ::2]
    residual = random_tensor(shape, dtype, device, generator=generator)
    return residual.to(memory_format=torch.channels_last) if layout == "channels_last" \
        else residual


def reference_forward(case, x, w, b):
    """float64 CPU leaves and the convolution through torch's conv2d."""
    leaves = [None if t is None else float64_cpu(t).requires_grad_() for t in (x, w, b)]
    pre = F.conv2d(*leaves, case["stride"], case["padding"], case["dilation"], case["groups"])
    return leaves, pre


def run_case(device, backend, case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x, w, b = conv_inputs(case, (case["K"], case["C"] // case["groups"], case["R"], case["S"]),
                          dtype, device, generator)
    (x64, w64, b64), pre64 = reference_forward(case, x, w, b)
    r = make_residual(case.get("residual"), pre64.shape, dtype, device, generator)
    if r is not None:
        r64 = float64_cpu(r).requires_grad_()
        pre64 = pre64 + r64
    reduction = (case["C"] // case["groups"]) * case["R"] * case["S"]
    grad_y = output_gradient(case, pre64, dtype, device, generator, tolerance(dtype, reduction))

    for t in (x, w, b, r):
        if t is not None:
            t.requires_grad_()
    with ck.use(backend=backend):
        y = ck.conv2d(x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"],
                      activation=case["activation"], residual=r)
        y.backward(grad_y)
    y64 = ACTIVATIONS[case["activation"]](pre64)
    y64.backward(float64_cpu(grad_y))

    assert_close(y, y64.detach(), dtype, reduction, "output")
    assert _args.is_channels_last(y) == _args.is_channels_last(
        F.conv2d(x.detach(), w.detach(), None, case["stride"], case["padding"],
                 case["dilation"], case["groups"])), "output memory format differs from torch's"
    # grad_input sums over (K/groups) * R * S taps, grad_weight over N * P * Q.
    n_pq = y.shape[0] * y.shape[2] * y.shape[3]
    assert_close(x.grad, x64.grad, dtype, (case["K"] // case["groups"]) * case["R"] * case["S"],
                 "grad_input")
    assert_close(w.grad, w64.grad, dtype, n_pq, "grad_weight")
    if b is not None:
        assert_close(b.grad, b64.grad, dtype, n_pq, "grad_bias")
    if r is not None:
        # grad_y * act'(z): z's rounding (a sum of `reduction` terms) moves it.
        assert_close(r.grad, r64.grad, dtype, reduction, "grad_residual")




def _plus(y, residual):
    """torch's y + residual with the residual in y's dtype: what the fused
    epilogue computes under autocast too (it casts the residual like the
    input), where torch's addition would promote to float32."""
    return y + residual.to(y.dtype)


def _samples():
    """A grouped, strided, dilated, asymmetrically padded convolution with a
    fused relu6 and bias; the same with silu and a channels_last residual; a
    plain one without bias."""
    def fused_inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 4, 5, 4), dtype, device, generator=generator),
                random_tensor((4, 2, 3, 2), dtype, device, generator=generator),
                random_tensor((4,), dtype, device, generator=generator))

    def residual_inputs(dtype, device, generator, batch):
        residual = random_tensor((batch, 4, 3, 6), dtype, device, generator=generator)
        return (*fused_inputs(dtype, device, generator, batch),
                residual.to(memory_format=torch.channels_last))

    def plain_inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 3, 4, 4), dtype, device, generator=generator),
                random_tensor((2, 3, 2, 2), dtype, device, generator=generator))

    params = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    return (
        Sample("fused", lambda x, w, b: ck.conv2d(x, w, b, **params, activation="relu6"),
               lambda x, w, b: F.relu6(F.conv2d(x, w, b, **params)), fused_inputs, 12),
        Sample("residual_silu",
               lambda x, w, b, r: ck.conv2d(x, w, b, **params, activation="silu", residual=r),
               lambda x, w, b, r: F.silu(_plus(F.conv2d(x, w, b, **params), r)),
               residual_inputs, 12),
        Sample("plain", lambda x, w: ck.conv2d(x, w, padding=1),
               lambda x, w: F.conv2d(x, w, padding=1), plain_inputs, 12),
    )


def _op_calls(device, backend, dtype):
    """Every op: the forward with a residual and silu (z kept) and with relu
    (z not kept), the backward ops reading silu's pre-activation and relu's
    output, the activation's gradient."""
    generator = torch.Generator().manual_seed(5)
    x = random_tensor((2, 4, 6, 5), dtype, device, generator=generator).requires_grad_()
    w = random_tensor((6, 2, 3, 2), dtype, device, generator=generator).requires_grad_()
    b = random_tensor((6,), dtype, device, generator=generator).requires_grad_()
    geometry = ([2, 1], [1, 1, 0, 1], [1, 2], 2)
    r = random_tensor((2, 6, 3, 4), dtype, device, generator=generator).requires_grad_()
    y, z = conv2d_op(x.detach(), w.detach(), b.detach(), r.detach(), *geometry, "silu", True,
                     "auto", backend)
    relu_y, _ = conv2d_op(x.detach(), w.detach(), b.detach(), None, *geometry, "relu", False,
                          "auto", backend)
    grad_y = random_tensor(y.shape, dtype, device, generator=generator)
    backward = [(op, (grad_y, saved, x.detach(), w.detach(), *geometry, activation, "auto",
                      backend))
                for op in (conv2d_grad_input_op, conv2d_grad_weight_op)
                for saved, activation in ((z, "silu"), (relu_y, "relu"))]
    return [(conv2d_op, (x, w, b, r, *geometry, "silu", True, "auto", backend)),
            (conv2d_op, (x, w, b, None, *geometry, "relu", False, "auto", backend)),
            *backward,
            (conv2d_activation_grad_op, (grad_y.clone().requires_grad_(),
                                         z.clone().requires_grad_(), "silu", backend))]


def _conv_args(**overrides):
    generator = torch.Generator().manual_seed(17)
    args = dict(input=random_tensor((2, 4, 8, 8), torch.float32, "cpu", generator=generator),
                weight=random_tensor((6, 4, 3, 3), torch.float32, "cpu", generator=generator),
                bias=None, stride=1, padding=0, dilation=1, groups=1)
    args.update(overrides)
    return args


_W = torch.randn(6, 4, 3, 3)

BAD_INPUTS = tuple((name, lambda overrides=overrides: ck.conv2d(**_conv_args(**overrides)),
                    error, message) for name, overrides, error, message in (
    ("input_rank", dict(input=torch.randn(4, 8)), ValueError, "input must be 3-D or 4-D"),
    ("weight_rank", dict(weight=torch.randn(6, 4, 3)), ValueError, "weight must be 4-D"),
    ("input_type", dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
    ("bias_rank", dict(bias=torch.randn(6, 1)), ValueError, "bias must be 1-D"),
    ("bias_size", dict(bias=torch.randn(5)), ValueError, "bias must have weight.shape[0] = 6"),
    ("channels", dict(weight=torch.randn(6, 3, 3, 3)), ValueError, "input has 4 channels"),
    ("groups_out", dict(weight=torch.randn(5, 2, 3, 3), groups=2), ValueError,
     "divisible by groups=2"),
    ("groups_zero", dict(groups=0), ValueError, "groups must be a positive int"),
    ("groups_float", dict(groups=1.5), TypeError, "groups must be a positive int"),
    ("stride_zero", dict(stride=0), ValueError, "stride must be >= 1"),
    ("stride_triple", dict(stride=(1, 1, 1)), TypeError, "stride must be an int or a pair"),
    ("dilation_zero", dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    ("padding_negative", dict(padding=-1), ValueError, "padding must be >= 0"),
    ("padding_string", dict(padding="full"), ValueError, "padding must be 'same', 'valid'"),
    ("padding_same_strided", dict(padding="same", stride=2), ValueError,
     "padding='same' needs stride 1"),
    ("output_too_small", dict(weight=torch.randn(6, 4, 9, 3)), ValueError,
     "output size (0, 6) is too small"),
    ("dtype_mismatch", dict(weight=_W.double()), TypeError, "weight must have input's dtype"),
    ("integer_input", dict(input=torch.ones(2, 4, 8, 8, dtype=torch.int32),
                           weight=torch.ones(6, 4, 3, 3, dtype=torch.int32)), TypeError,
     "input must be a floating-point tensor"),
    ("device_mismatch", dict(weight=_W.to("meta")), ValueError,
     "weight must be on input's device cpu"),
    ("activation", dict(activation="gelu"), ValueError,
     "activation must be None, 'relu', 'relu6' or 'silu', got 'gelu'"),
    ("residual_shape", dict(residual=torch.randn(2, 6, 6, 5)), ValueError,
     "residual must have the output's shape (2, 6, 6, 6) (it is not broadcast), "
     "got (2, 6, 6, 5)"),
    ("residual_broadcast", dict(residual=torch.randn(1, 6, 1, 1)), ValueError,
     "residual must have the output's shape (2, 6, 6, 6) (it is not broadcast), "
     "got (1, 6, 1, 1)"),
    ("residual_rank", dict(residual=torch.randn(6, 6, 6)), ValueError,
     "residual must be 4-D, got a 3-D tensor of shape (6, 6, 6)"),
    ("residual_dtype", dict(residual=torch.randn(2, 6, 6, 6, dtype=torch.float64)), TypeError,
     "residual must have input's dtype torch.float32, got torch.float64"),
    ("residual_device", dict(residual=torch.randn(2, 6, 6, 6, device="meta")), ValueError,
     "residual must be on input's device cpu, got meta"),
    ("residual_type", dict(residual=[[1.0]]), TypeError,
     "residual must be a torch.Tensor, got list"),
))

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=(dict(N=2, C=4, K=6, H=7, W=5, R=3, S=3, stride=(1, 2), padding=1,
                      dilation=(1, 1), groups=2, bias=True, activation="relu",
                      layout="channels_last"),
                 dict(N=2, C=4, K=6, H=7, W=5, R=3, S=3, stride=(1, 2), padding=1,
                      dilation=(1, 1), groups=2, bias=True, activation="silu",
                      layout="contiguous", residual="noncontiguous")),
    samples=_samples(), op_calls=_op_calls, bad_inputs=BAD_INPUTS)

globals().update(common_tests(SPEC))


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_weight_gradient_split_reduction(device, backend):
    """A reduction long enough that the GPU launchers split it across
    programs (Triton: grad_weight_splits > 1) and sum the splits after."""
    case = dict(N=2, C=3, K=4, H=23, W=21, R=3, S=3, stride=(1, 1), padding=1, dilation=(1, 1),
                groups=1, bias=True, activation=None, layout="contiguous")
    if backend == "triton":
        from cnnkernels.kernels.conv2d.direct import grad_weight_splits

        g = Conv2dGeometry(N=2, C=3, H=23, W=21, K=4, R=3, S=3, P=23, Q=21, stride_h=1,
                           stride_w=1, pad_top=1, pad_left=1, dil_h=1, dil_w=1, groups=1,
                           activation=Activation.none)
        assert grad_weight_splits(g)[0] > 1
    run_case(device, backend, case, dtypes_for(device, backend)[0], seed=7)


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_unbatched_input(device, backend):
    generator = torch.Generator().manual_seed(3)
    dtype = dtypes_for(device, backend)[0]
    x = random_tensor((3, 6, 7), dtype, device, generator=generator)
    w = random_tensor((4, 3, 3, 3), dtype, device, generator=generator)
    with ck.use(backend=backend):
        y = ck.conv2d(x, w, padding="same")
    assert_close(y, F.conv2d(float64_cpu(x), float64_cpu(w), padding="same"), dtype, 27, "output")


def _geometry(C, K, R, groups):
    return Conv2dGeometry(2, C, 8, 8, K, R, R, 8, 8, 1, 1, R // 2, R // 2, 1, 1, groups,
                          Activation.relu)


CPU_ALGORITHMS = [p for p in backend_params() if p.values[1] == "cpu"]


@pytest.mark.parametrize(("device", "backend"), CPU_ALGORITHMS)
@pytest.mark.parametrize("algorithm", ["direct", "implicit_gemm"])
@pytest.mark.parametrize("seed", range(24))
def test_cpu_algorithms_match_torch(device, backend, algorithm, seed):
    """Each cpu algorithm forced, over the random cases (edge tiles: sizes
    that are no multiple of the micro-tile, depthwise, groups, layouts)."""
    dtypes = dtypes_for(device, backend)
    with ck.use(conv_algorithm=algorithm):
        run_case(device, backend, random_case(1000 + seed, False), dtypes[seed % len(dtypes)],
                 seed)


@pytest.mark.parametrize(("device", "backend"), CPU_ALGORITHMS)
@pytest.mark.parametrize("case", [
    # One image of many pixels: several pixel blocks, several reduction
    # chunks (C/groups * R * S > 256), rows past one A block (K > 144); a
    # residual into the in-place path's tiles.
    dict(N=1, C=40, K=150, H=19, W=17, R=3, S=3, stride=(1, 1), padding=1,
         residual="contiguous"),
    # grad_weight's split reduction (N * P * Q > 4096) and a strided grad_input.
    dict(N=5, C=8, K=12, H=30, W=31, R=3, S=2, stride=(1, 1), padding=(1, 0)),
    dict(N=2, C=16, K=24, H=21, W=20, R=3, S=3, stride=(2, 2), padding=1),
    # Pointwise, channels_last, a large-padding stride-1 grad_input (negative
    # padding of the transposed problem).
    dict(N=3, C=33, K=17, H=9, W=11, R=1, S=1, stride=(1, 1), padding=0,
         layout="channels_last", activation="silu", residual="channels_last"),
    dict(N=2, C=5, K=9, H=6, W=7, R=2, S=3, stride=(1, 1), padding=(3, 4), dilation=(2, 1)),
    # A padded row wider than a pixel block (the in-place path's slack).
    dict(N=1, C=3, K=13, H=3, W=300, R=3, S=5, stride=(1, 1), padding=(1, 2),
         activation="silu", residual="noncontiguous"),
    # Small planes: the columns run across images (7 x 7 x 11 images: blocks
    # that start and end inside an image) and, with few column blocks, the
    # rows (K = 40 > 12 * 2) split between tasks; the residual and bias by row.
    dict(N=11, C=12, K=40, H=7, W=7, R=3, S=3, stride=(1, 1), padding=1,
         residual="contiguous"),
    dict(N=5, C=20, K=30, H=2, W=2, R=3, S=3, stride=(1, 1), padding=1, activation="relu6",
         layout="channels_last", residual="channels_last"),
    # Stride 1 with few input channels: grad_input by the scatter GEMM
    # (LeNet-5's C3; a padded grouped channels_last one).
    dict(N=3, C=6, K=16, H=14, W=14, R=5, S=5, stride=(1, 1), padding=0),
    dict(N=2, C=4, K=32, H=9, W=8, R=3, S=3, stride=(1, 1), padding=1, groups=2,
         layout="channels_last"),
], ids=["many_tiles", "split_reduction", "strided", "pointwise_cl", "big_padding", "wide",
        "planes_across_images", "tiny_planes_cl", "scatter_stride1", "scatter_grouped_cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_implicit_gemm_blocking_edges(device, backend, case, dtype):
    full = dict(dilation=(1, 1), groups=1, bias=True, activation="relu", layout="contiguous")
    full.update(case)
    with ck.use(conv_algorithm="implicit_gemm"):
        run_case(device, backend, full, dtype, seed=11)


def test_cpu_algorithms_are_deterministic_across_thread_counts():
    """A fixed summation order (chunks set by the sizes, never by the
    thread count): bit-identical with 1 and 2 threads, run after run."""
    generator = torch.Generator().manual_seed(2)
    x = random_tensor((3, 24, 20, 20), torch.float32, "cpu", generator=generator)
    w = random_tensor((36, 24, 3, 3), torch.float32, "cpu", generator=generator)
    grad_y = random_tensor((3, 36, 20, 20), torch.float32, "cpu", generator=generator)
    _assert_same_across_thread_counts("implicit_gemm", x, w, grad_y, groups=1)


def _assert_same_across_thread_counts(algorithm, x, w, grad_y, groups):
    """The cpu ``algorithm``'s output and gradients of a padded relu
    convolution with 1, 2 and again 2 threads: bit-identical."""
    threads = torch.get_num_threads()

    def run():
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = ck.conv2d(xl, wl, padding=1, groups=groups, activation="relu")
        y.backward(grad_y)
        return y.detach(), xl.grad, wl.grad

    results = []
    try:
        with ck.use(backend="cpu", conv_algorithm=algorithm):
            for count in (1, 2, 2):
                torch.set_num_threads(count)
                results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_unsupported_dtype_on_backend_raises():
    with ck.use(backend="triton"), pytest.raises(TypeError,
                                                 match="backend 'triton' computes conv2d"):
        ck.conv2d(**_conv_args(input=torch.randn(2, 4, 8, 8, dtype=torch.float16),
                               weight=torch.randn(6, 4, 3, 3, dtype=torch.float16)))


def test_backend_for_other_device_raises():
    with ck.use(backend="cuda"), pytest.raises(RuntimeError,
                                               match="backend 'cuda' runs CUDA tensors"):
        ck.conv2d(**_conv_args())


def test_direct_op_call_is_validated():
    """torch.ops.cnnk.conv2d checks its arguments too (no kernel sees them)."""
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        torch.ops.cnnk.conv2d(x, w, None, None, [1, 1], [0, -1, 0, 0], [1, 1], 1, "none", False,
                              "auto", "cpu")
    with pytest.raises(ValueError, match="conv_algorithm must be one of"):
        torch.ops.cnnk.conv2d(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "none", False,
                              "winograd", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.ops.cnnk.conv2d(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "none", False,
                              "auto", "gpu")
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(2, 6, 6, 6\)"):
        torch.ops.cnnk.conv2d(x, w, None, torch.randn(2, 6, 8, 8), [1, 1], [0, 0, 0, 0], [1, 1],
                              1, "none", False, "auto", "cpu")
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        torch.ops.cnnk.conv2d_grad_input(torch.randn(2, 6, 5, 5), None, x, w, [1, 1],
                                         [0, 0, 0, 0], [1, 1], 1, "none", "auto", "cpu")
    with pytest.raises(ValueError, match=r"output \(the forward output; for silu the "
                                         r"pre-activation\) is needed"):
        torch.ops.cnnk.conv2d_grad_weight(torch.randn(2, 6, 6, 6), None, x, w, [1, 1],
                                          [0, 0, 0, 0], [1, 1], 1, "relu", "auto", "cpu")


def _algorithm_params():
    """(device, backend, algorithm) for every algorithm on every backend."""
    params = []
    for p in backend_params():
        for algorithm, kernels in _ALGORITHM_KERNELS.items():
            if p.values[1] in kernels.BACKENDS:
                params.append(pytest.param(*p.values, algorithm, id=f"{p.id}-{algorithm}",
                                           marks=p.marks))
    return params


# Small enough for the interpreter; grouped, strided, padded, non-square.
EPILOGUE_CASE = dict(N=2, C=4, K=4, H=5, W=6, R=3, S=2, stride=(1, 2), padding=(1, 0),
                     dilation=(1, 1), groups=2, bias=True, layout="noncontiguous")


@pytest.mark.parametrize(("device", "backend", "algorithm"), _algorithm_params())
@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
@pytest.mark.parametrize("residual", RESIDUAL_LAYOUTS, ids=str)
def test_every_epilogue_on_every_algorithm(device, backend, algorithm, activation, residual):
    """Every activation with and without a residual (in every layout):
    output, grad_input, grad_weight, grad_bias and grad_residual against
    torch's chain act(conv2d + residual) in float64."""
    case = dict(EPILOGUE_CASE, activation=activation, residual=residual)
    if algorithm == "pointwise":
        case.update(R=1, S=1, stride=(1, 1), padding=0)
    if algorithm == "depthwise":  # one input channel per group, multiplier 2
        case.update(C=4, K=8, groups=4)
    with ck.use(conv_algorithm=algorithm):
        run_case(device, backend, case, dtypes_for(device, backend)[0], seed=21)


# The interpreter's numpy warns of the overflows the test asks for.
@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
@pytest.mark.parametrize(("device", "backend", "algorithm"), _algorithm_params())
def test_silu_at_extreme_values_is_torchs(device, backend, algorithm):
    """silu of +-inf, NaN and values whose e^-z overflows float32 (+-100,
    +-1000), reached through the residual: torch's values (NaN at -inf and
    NaN, inf at inf, -0 far below zero) and torch's gradient with respect to
    the residual (NaN at +-inf and NaN)."""
    generator = torch.Generator().manual_seed(4)
    groups, K = (2, 4) if algorithm == "depthwise" else (1, 3)
    x = random_tensor((1, 2, 4, 4), torch.float32, device, generator=generator)
    w = random_tensor((K, 2 // groups, 1, 1), torch.float32, device, generator=generator)
    residual = random_tensor((1, K, 4, 4), torch.float32, device, generator=generator)
    extremes = [float("inf"), float("-inf"), float("nan"), 100.0, -100.0, 1000.0, -1000.0]
    residual.view(-1)[:len(extremes)] = torch.tensor(extremes)
    residual.requires_grad_()
    with ck.use(backend=backend, conv_algorithm=algorithm):
        y = ck.conv2d(x, w, groups=groups, activation="silu", residual=residual)
        grad_residual, = torch.autograd.grad(y.sum(), residual)
    r = residual.detach().cpu().requires_grad_()
    expected = F.silu(F.conv2d(x.cpu(), w.cpu(), groups=groups) + r)
    expected_grad, = torch.autograd.grad(expected.sum(), r)
    for actual, reference, what in ((y, expected, "output"),
                                    (grad_residual, expected_grad, "grad_residual")):
        actual, reference = actual.detach().cpu(), reference.detach()
        for special in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(special(actual), special(reference)), f"{what}: {special}"
        finite = torch.isfinite(reference)
        torch.testing.assert_close(actual[finite], reference[finite], atol=1e-5, rtol=1e-5)


def test_preactivation_is_kept_only_for_silu_when_asked():
    """The op returns silu's pre-activation conv + bias + residual when
    asked (the public function asks only when derivatives will be taken),
    else an empty tensor; differentiating silu without it is an error."""
    generator = torch.Generator().manual_seed(9)
    x = random_tensor((2, 3, 5, 5), torch.float64, "cpu", generator=generator)
    w = random_tensor((4, 3, 3, 3), torch.float64, "cpu", generator=generator)
    b = random_tensor((4,), torch.float64, "cpu", generator=generator)
    r = random_tensor((2, 4, 3, 3), torch.float64, "cpu", generator=generator)
    geometry = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    _, z = conv2d_op(x, w, b, r, *geometry, "silu", True, "auto", "cpu")
    assert_close(z, F.conv2d(x, w, b) + r, torch.float64, 27, "preactivation")
    for activation, keep in (("silu", False), ("relu", True), ("none", True)):
        assert conv2d_op(x, w, b, r, *geometry, activation, keep, "auto", "cpu")[1].numel() == 0
    with pytest.raises(ValueError, match="call it with keep_preactivation=True"):
        conv2d_op(x.requires_grad_(), w, b, r, *geometry, "silu", False, "auto", "cpu")


def test_router(monkeypatch):
    """Each branch of the rule written in ``route``: depthwise for one input
    channel per group wherever the backend has it (any multiplier, every
    direction and dtype); the cpu's implicit GEMM otherwise, im2col for a
    filter covering its whole unpadded input (a fully connected layer); on
    the GPU backends pointwise for 1x1, implicit GEMM otherwise, direct for
    fp64 and exact fp32."""
    dense, pointwise = _geometry(64, 64, 3, 1), _geometry(256, 64, 1, 1)
    fully_connected = Conv2dGeometry(8, 16, 5, 5, 120, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1,
                                     Activation.relu)
    padded_to_one = Conv2dGeometry(8, 16, 3, 3, 120, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                   Activation.relu)
    depthwise, grouped = _geometry(32, 32, 3, 32), _geometry(64, 64, 3, 16)
    multiplier, single_channel = _geometry(32, 64, 5, 32), _geometry(1, 6, 5, 1)
    for direction in ("forward", "grad_input", "grad_weight"):
        for g in (dense, pointwise, grouped, padded_to_one):
            assert route(g, "cpu", direction) == "implicit_gemm"
        assert route(fully_connected, "cpu", direction) == "im2col"
        for g in (depthwise, multiplier, single_channel):
            assert route(g, "cpu", direction) == "depthwise"
    for direction in ("forward", "grad_input", "grad_weight"):
        for dtype in (torch.bfloat16, torch.float16):
            assert route(dense, "triton", direction, dtype) == "implicit_gemm"
            assert route(grouped, "triton", direction, dtype) == "implicit_gemm"
            assert route(pointwise, "triton", direction, dtype) == "pointwise"
            for g in (depthwise, multiplier, single_channel):
                assert route(g, "triton", direction, dtype) == "depthwise"
        assert route(dense, "triton", direction, torch.float64) == "direct"
        assert route(depthwise, "triton", direction, torch.float64) == "depthwise"
        monkeypatch.setattr(conv2d_ops, "tf32_allowed", lambda: True)
        assert route(dense, "triton", direction, torch.float32) == "implicit_gemm"
        monkeypatch.setattr(conv2d_ops, "tf32_allowed", lambda: False)
        assert route(dense, "triton", direction, torch.float32) == "direct"
        assert route(depthwise, "triton", direction, torch.float32) == "depthwise"
        assert route(dense, "triton", direction, torch.bfloat16) == "implicit_gemm"


def test_router_takes_depthwise_where_the_backend_has_it(monkeypatch):
    """A GPU backend with depthwise kernels takes them for one channel per group."""
    monkeypatch.setattr(conv2d_ops, "_available",
                        lambda backend: ("direct", "implicit_gemm", "pointwise", "depthwise"))
    for direction in ("forward", "grad_input", "grad_weight"):
        assert route(_geometry(32, 32, 3, 32), "triton", direction, torch.bfloat16) == "depthwise"
        assert route(_geometry(64, 64, 3, 16), "triton", direction,
                     torch.bfloat16) == "implicit_gemm"


def test_router_on_a_cuda_build_without_the_tensor_core_kernels(monkeypatch):
    """A CUDA build that predates the tensor-core and depthwise kernels
    routes to direct."""
    monkeypatch.setattr(conv2d_ops, "_available", lambda backend: ("direct",))
    assert route(_geometry(64, 64, 3, 1), "cuda", "forward", torch.bfloat16) == "direct"
    assert route(_geometry(32, 32, 3, 32), "cuda", "forward", torch.bfloat16) == "direct"


def test_algorithm_errors_name_what_runs():
    with ck.use(backend="cpu", conv_algorithm="pointwise"), \
            pytest.raises(ValueError, match="'pointwise' takes 1x1 convolutions with stride 1"):
        ck.conv2d(**_conv_args())
    with ck.use(backend="cpu", conv_algorithm="depthwise"), \
            pytest.raises(ValueError, match="'depthwise' takes one input channel per group"):
        ck.conv2d(**_conv_args())
    if not ck.info()["cuda_kernels_built"]:
        with ck.use(backend="cuda", conv_algorithm="implicit_gemm"), \
                pytest.raises((ValueError, RuntimeError)):
            ck.conv2d(**_conv_args())


POINTWISE_CASE = dict(N=2, C=6, K=10, H=5, W=7, R=1, S=1, stride=(1, 1), padding=0,
                      dilation=(1, 1), groups=2, bias=True, activation="relu")


def depthwise_case(seed: int, tiny: bool) -> dict:
    """A random depthwise convolution (one input channel per group,
    multiplier 1 or 2): the random case's strides, dilations, padding,
    layouts and epilogue with 3x3, 5x5, 7x7 or non-square filters."""
    rng = random.Random(seed)
    case = random_case(seed, tiny)
    groups = rng.choice((1, 3, 5) if tiny else (1, 3, 8, 19))
    R, S = rng.choice(((3, 3), (5, 5), (3, 5), (1, 3)) if tiny
                      else ((3, 3), (3, 3), (5, 5), (7, 7), (3, 5), (2, 1)))
    stride = case["stride"] if case["padding"] == "same" else (rng.choice((1, 2, 3)),
                                                               rng.choice((1, 2)))
    extent = (case["dilation"][0] * (R - 1) + 1, case["dilation"][1] * (S - 1) + 1)
    case.update(C=groups, K=groups * rng.choice((1, 2)), groups=groups, R=R, S=S, stride=stride,
                H=max(extent[0], case["H"]), W=max(extent[1], case["W"]))
    return case


def _algorithm_case(algorithm: str, seed: int, tiny: bool) -> dict:
    """A random case the algorithm takes (pointwise: a 1x1 stride-1 unpadded
    one in the random case's layout; depthwise: a depthwise one)."""
    if algorithm == "depthwise":
        return depthwise_case(seed, tiny)
    case = random_case(seed, tiny)
    if algorithm == "pointwise":
        case.update(POINTWISE_CASE)
    return case


@pytest.mark.parametrize(("device", "backend"), CPU_ALGORITHMS)
@pytest.mark.parametrize("algorithm", ["im2col", "pointwise"])
@pytest.mark.parametrize("seed", range(8))
def test_cpu_patch_and_pointwise_algorithms_match_torch(device, backend, algorithm, seed):
    dtypes = dtypes_for(device, backend)
    with ck.use(conv_algorithm=algorithm):
        run_case(device, backend, _algorithm_case(algorithm, 2000 + seed, False),
                 dtypes[seed % len(dtypes)], seed)


@pytest.mark.parametrize(("device", "backend"), CPU_ALGORITHMS)
@pytest.mark.parametrize("seed", range(32))
def test_cpu_depthwise_matches_torch(device, backend, seed):
    """The depthwise algorithm over random depthwise cases, every dtype."""
    dtypes = dtypes_for(device, backend)
    with ck.use(conv_algorithm="depthwise"):
        run_case(device, backend, depthwise_case(4000 + seed, False), dtypes[seed % len(dtypes)],
                 seed)


@pytest.mark.parametrize(("device", "backend"), CPU_ALGORITHMS)
@pytest.mark.parametrize("case", [
    # The specialised plane kernels (3x3, 5x5 at stride 1 and 2) with rows
    # longer than the vector lanes, channels_last channel blocks past 16.
    dict(C=20, K=20, H=19, W=21, R=3, S=3, stride=(1, 1), padding=1, layout="channels_last"),
    dict(C=18, K=36, H=20, W=23, R=3, S=3, stride=(2, 2), padding=1, layout="channels_last"),
    # The channels_last pixel path (multiplier 1, float and double): strides
    # whose gathers skip taps, dilation, padding past the filter.
    dict(C=24, K=24, H=13, W=14, R=5, S=3, stride=(2, 3), padding=(4, 1), dilation=(2, 1),
         layout="channels_last", residual="noncontiguous", activation="silu"),
    dict(C=5, K=5, H=17, W=26, R=5, S=5, stride=(1, 1), padding=2),
    dict(C=5, K=10, H=17, W=26, R=5, S=5, stride=(2, 2), padding=2, residual="channels_last"),
    # Padding larger than the filter (the gather's negative offset), a
    # stride larger than the filter (input pixels no tap reads).
    dict(C=3, K=3, H=6, W=7, R=3, S=3, stride=(1, 1), padding=(4, 5)),
    dict(C=3, K=6, H=11, W=12, R=2, S=2, stride=(3, 3), padding=0),
    # One input channel, groups 1: a multiplier of 6 (LeNet's first layer).
    dict(C=1, K=6, H=12, W=12, R=5, S=5, stride=(1, 1), padding=0, groups=1),
], ids=["3x3_cl", "3x3_s2_cl", "strided_dilated_cl", "5x5", "5x5_s2", "big_padding",
        "stride_over_kernel", "one_channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_depthwise_edges(device, backend, case, dtype):
    full = dict(N=2, dilation=(1, 1), groups=case["C"], bias=True, activation="relu",
                layout="contiguous")
    full.update(case)
    with ck.use(conv_algorithm="depthwise"):
        run_case(device, backend, full, dtype, seed=13)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_cpu_depthwise_is_deterministic_across_thread_counts(layout):
    """grad_weight sums each channel's images in order, in lanes fixed by
    the sizes: bit-identical with 1 and 2 threads, in both layouts."""
    generator = torch.Generator().manual_seed(3)
    x = random_tensor((4, 40, 24, 24), torch.float32, "cpu", generator=generator)
    x = x.to(memory_format=layout)
    w = random_tensor((40, 1, 3, 3), torch.float32, "cpu", generator=generator)
    grad_y = random_tensor((4, 40, 24, 24), torch.float32, "cpu", generator=generator)
    _assert_same_across_thread_counts("depthwise", x, w, grad_y, groups=40)


@pytest.mark.parametrize("channels", [3, 8])
def test_cpu_depthwise_window_far_larger_than_the_input(channels):
    """Huge padding and dilation cost nothing extra: no plane padded to the
    window (the direct kernels or the channels_last pixels take them)."""
    x = torch.randn(1, channels, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, 2, 2, dtype=torch.float64)
    args = dict(padding=2**30, dilation=2**30, stride=2**31, groups=channels)
    results = []
    for conv in (ck.conv2d, F.conv2d):
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        with ck.use(backend="cpu", conv_algorithm="depthwise"):
            y = conv(xl, wl, **args)
            results.append((y, *torch.autograd.grad(y, (xl, wl), torch.ones_like(y))))
    for ours, torchs in zip(*results, strict=True):
        torch.testing.assert_close(ours, torchs)


def test_cpu_depthwise_empty_batch():
    """No images: an empty output and zero weight and bias gradients."""
    x = torch.randn(0, 6, 7, 7, requires_grad=True)
    w = torch.randn(12, 1, 3, 3, requires_grad=True)
    b = torch.randn(12, requires_grad=True)
    with ck.use(backend="cpu", conv_algorithm="depthwise"):
        y = ck.conv2d(x, w, b, padding=1, groups=6, activation="relu")
        y.sum().backward()
    assert y.shape == (0, 12, 7, 7)
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


TRITON_PARAMS = [p for p in backend_params() if p.values[1] == "triton"]


@pytest.mark.parametrize(("device", "backend"), TRITON_PARAMS)
@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "pointwise"])
@pytest.mark.parametrize("seed", range(5))
def test_triton_tensor_core_algorithms_match_torch(device, backend, algorithm, seed):
    """The Triton tensor-core algorithms forced, over tiny random cases
    (groups, strides, dilations, every padding form and layout) in fp32 and
    fp64 in the interpreter (tl.dot runs there), bf16 and fp16 on a GPU."""
    dtypes = dtypes_for(device, backend)
    with ck.use(conv_algorithm=algorithm):
        run_case(device, backend, _algorithm_case(algorithm, 3000 + seed, True),
                 dtypes[seed % len(dtypes)], seed)


@pytest.mark.parametrize(("device", "backend"), TRITON_PARAMS)
@pytest.mark.parametrize("case", [
    # Stride phases whose taps never align with the dilation (some phases get
    # no tap at all) and a stride larger than the kernel.
    dict(N=1, C=3, K=4, H=8, W=9, R=3, S=3, stride=(2, 2), padding=(2, 1), dilation=(2, 2)),
    dict(N=2, C=4, K=6, H=9, W=9, R=3, S=3, stride=(4, 2), padding=(0, 1), dilation=(2, 3),
         groups=2),
    # Channels past one tile and a split pixel reduction in grad_weight.
    dict(N=2, C=20, K=18, H=9, W=8, R=2, S=2, stride=(1, 1), padding=1, layout="channels_last"),
], ids=["phase_without_taps", "stride_over_kernel", "tiles_and_splits"])
def test_triton_implicit_gemm_edges(device, backend, case):
    full = dict(dilation=(1, 1), groups=1, bias=True, activation="relu", layout="contiguous")
    full.update(case)
    with ck.use(conv_algorithm="implicit_gemm"):
        run_case(device, backend, full, dtypes_for(device, backend)[0], seed=5)


@pytest.mark.parametrize(("device", "backend"), TRITON_PARAMS)
def test_triton_implicit_gemm_grad_weight_is_deterministic(device, backend):
    """The split reduction's order is fixed by the shape: bit-identical runs."""
    from cnnkernels.kernels.conv2d import implicit_gemm

    generator = torch.Generator().manual_seed(4)
    dtype = dtypes_for(device, backend)[0]
    # Pixels enough for a split reduction with the interpreter's blocks and the GPU's.
    x = random_tensor((2, 16, 12, 12), dtype, device, generator=generator)
    w = random_tensor((16, 16, 3, 3), dtype, device, generator=generator)
    gy = random_tensor((2, 16, 12, 12), dtype, device, generator=generator)
    g = conv2d_ops._geometry(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, "none", "auto")
    assert implicit_gemm.grad_weight_splits(g, implicit_gemm._grad_weight_blocks("strided"))[0] > 1
    with ck.use(backend=backend, conv_algorithm="implicit_gemm"):
        runs = [conv2d_grad_weight_op(gy, None, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1, "none",
                                      "implicit_gemm", backend)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    reference = torch.ops.aten.convolution_backward(
        float64_cpu(gy), float64_cpu(x), float64_cpu(w), None, (1, 1), (1, 1), (1, 1), False,
        (0, 0), 1, (False, True, False))[1]
    assert_close(runs[0], reference, dtype, 2 * 12 * 12, "grad_weight")
