"""cnnkernels.conv_transpose2d against torch.nn.functional.conv_transpose2d
in float64, on every backend that runs here: forward, grad_input,
grad_weight, grad_bias, the fused activation, layouts, double backward,
autocast. The tests every family gets come from tests/harness.py; this
module adds the transposed convolution's own: every stride / padding /
output_padding / dilation / groups combination torch accepts on each
algorithm, unbatched input, torch's error cases, the nn module and patch."""

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, dtypes_for, interpreted
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
from cnnkernels.ops.conv_transpose2d import (
    conv_transpose2d_grad_input_op,
    conv_transpose2d_grad_weight_op,
    conv_transpose2d_op,
)

ACTIVATIONS = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu}


def random_case(seed: int, tiny: bool) -> dict:
    """Random transposed convolutions: odd sizes, groups, strides and
    dilations up to 3, and an output_padding anywhere below max(stride,
    dilation) (torch's rule), so also at or above the stride."""
    rng = random.Random(seed)
    groups = rng.choice((1, 1, 2, 3))
    in_per_group = rng.choice((1, 2, 3) if tiny else (1, 2, 3, 5))
    out_per_group = rng.choice((1, 2, 3) if tiny else (1, 2, 4, 5))
    R, S = rng.choice((1, 2, 3, 4)), rng.choice((1, 2, 3))
    stride = (rng.choice((1, 2, 3)), rng.choice((1, 2)))
    dilation = (rng.choice((1, 2)), rng.choice((1, 1, 3)))
    output_padding = tuple(rng.randrange(max(s, d)) for s, d in zip(stride, dilation,
                                                                     strict=True))
    padding = (rng.choice((0, 1, 2)), rng.choice((0, 1)))
    spatial = (1, 3, 5) if tiny else (1, 3, 7, 13)
    H, W = rng.choice(spatial), rng.choice(spatial)
    # Padding larger than the uncropped output would leave no output.
    for i, (size, k, s, d) in enumerate(((H, R, stride[0], dilation[0]),
                                         (W, S, stride[1], dilation[1]))):
        full = (size - 1) * s + d * (k - 1) + output_padding[i] + 1
        padding = tuple(min(p, (full - 1) // 2) if j == i else p for j, p in enumerate(padding))
    return dict(N=rng.choice((1, 2) if tiny else (1, 2, 3)),
                C=in_per_group * groups, K=out_per_group * groups, H=H, W=W, R=R, S=S,
                stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups, bias=rng.random() < 0.7,
                activation=rng.choice(tuple(ACTIVATIONS)),
                layout=rng.choice(("contiguous", "channels_last", "noncontiguous",
                                   "weight_channels_last")))


def _torch_args(case):
    return (case["stride"], case["padding"], case["output_padding"], case["groups"],
            case["dilation"])


def run_case(device, backend, case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x, w, b = conv_inputs(case, (case["C"], case["K"] // case["groups"], case["R"], case["S"]),
                          dtype, device, generator)
    leaves = [None if t is None else float64_cpu(t).requires_grad_() for t in (x, w, b)]
    x64, w64, b64 = leaves
    pre64 = F.conv_transpose2d(x64, w64, b64, *_torch_args(case))
    # A bound on the taps one output element sums (the stride phases take fewer).
    reduction = (case["C"] // case["groups"]) * case["R"] * case["S"]
    grad_y = output_gradient(case, pre64, dtype, device, generator, tolerance(dtype, reduction))
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_()
    with ck.use(backend=backend):
        y = ck.conv_transpose2d(x, w, b, *_torch_args(case), activation=case["activation"])
        y.backward(grad_y)
    y64 = ACTIVATIONS[case["activation"]](pre64)
    y64.backward(float64_cpu(grad_y))

    assert_close(y, y64.detach(), dtype, reduction, "output")
    assert _args.is_channels_last(y) == _args.is_channels_last(
        F.conv_transpose2d(x.detach(), w.detach(), None, *_torch_args(case))), \
        "output memory format differs from torch's"
    n_hw = y.shape[0] * y.shape[2] * y.shape[3]
    assert_close(x.grad, x64.grad, dtype, (case["K"] // case["groups"]) * case["R"] * case["S"],
                 "grad_input")
    assert_close(w.grad, w64.grad, dtype, x.shape[0] * x.shape[2] * x.shape[3], "grad_weight")
    if b is not None:
        assert_close(b.grad, b64.grad, dtype, n_hw, "grad_bias")


def _samples():
    """A grouped, strided, dilated one with an output_padding at the stride
    (below the dilation), a fused silu and bias; a plain U-Net-like 2x2
    stride-2 one without bias."""
    def fused_inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 4, 3, 4), dtype, device, generator=generator),
                random_tensor((4, 1, 3, 2), dtype, device, generator=generator),
                random_tensor((2,), dtype, device, generator=generator))

    def plain_inputs(dtype, device, generator, batch):
        return (random_tensor((batch, 3, 3, 2), dtype, device, generator=generator),
                random_tensor((3, 2, 2, 2), dtype, device, generator=generator))

    params = dict(stride=(1, 2), padding=(1, 0), output_padding=(1, 1), groups=2,
                  dilation=(2, 1))
    return (
        Sample("fused", lambda x, w, b: ck.conv_transpose2d(x, w, b, **params,
                                                            activation="silu"),
               lambda x, w, b: F.silu(F.conv_transpose2d(x, w, b, **params)), fused_inputs, 12),
        Sample("plain", lambda x, w: ck.conv_transpose2d(x, w, stride=2),
               lambda x, w: F.conv_transpose2d(x, w, stride=2), plain_inputs, 12),
    )


def _op_calls(device, backend, dtype):
    generator = torch.Generator().manual_seed(5)
    x = random_tensor((2, 4, 3, 4), dtype, device, generator=generator).requires_grad_()
    w = random_tensor((4, 3, 3, 2), dtype, device, generator=generator).requires_grad_()
    b = random_tensor((6,), dtype, device, generator=generator).requires_grad_()
    geometry = ([2, 1], [1, 0], [1, 1], [1, 2], 2)
    y, _ = conv_transpose2d_op(x.detach(), w.detach(), b.detach(), *geometry, "relu", False,
                               "auto", backend)
    grad_z = random_tensor(y.shape, dtype, device, generator=generator).requires_grad_()
    return [(conv_transpose2d_op, (x, w, b, *geometry, "silu", True, "auto", backend)),
            (conv_transpose2d_op, (x, w, None, *geometry, "none", False, "auto", backend)),
            (conv_transpose2d_grad_input_op, (grad_z, x, w, *geometry, "auto", backend)),
            (conv_transpose2d_grad_weight_op, (grad_z, x, w, *geometry, "auto", backend))]


def _call(**overrides):
    generator = torch.Generator().manual_seed(17)
    args = dict(input=random_tensor((2, 4, 5, 5), torch.float32, "cpu", generator=generator),
                weight=random_tensor((4, 3, 3, 3), torch.float32, "cpu", generator=generator),
                bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1)
    args.update(overrides)
    return ck.conv_transpose2d(**args)


_W = torch.randn(4, 3, 3, 3)

BAD_INPUTS = tuple((name, lambda overrides=overrides: _call(**overrides), error, message)
                   for name, overrides, error, message in (
    ("input_rank", dict(input=torch.randn(4, 8)), ValueError, "input must be 3-D or 4-D"),
    ("weight_rank", dict(weight=torch.randn(4, 3, 3)), ValueError, "weight must be 4-D"),
    ("bias_size", dict(bias=torch.randn(4)), ValueError,
     "bias must have weight.shape[1] * groups = 3 elements"),
    ("channels", dict(weight=torch.randn(3, 3, 3, 3)), ValueError,
     "input has 4 channels but weight (3, 3, 3, 3) expects 3"),
    ("groups", dict(groups=3, weight=torch.randn(4, 1, 3, 3)), ValueError,
     "input channels (4) must be divisible by groups=3"),
    ("groups_zero", dict(groups=0), ValueError, "groups must be a positive int"),
    ("stride_zero", dict(stride=0), ValueError, "stride must be >= 1"),
    ("dilation_zero", dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    ("padding_negative", dict(padding=-1), ValueError, "padding must be >= 0"),
    ("output_padding_at_stride", dict(stride=2, output_padding=2), ValueError,
     "output padding must be smaller than either stride or dilation"),
    ("output_padding_stride_1", dict(output_padding=(0, 1)), ValueError,
     "output padding must be smaller than either stride or dilation"),
    ("output_padding_at_dilation", dict(stride=2, dilation=3, output_padding=(0, 3)),
     ValueError, "output padding must be smaller than either stride or dilation"),
    ("output_too_small", dict(padding=4), ValueError, "output size (-1, -1) is too small"),
    ("dtype_mismatch", dict(weight=_W.double()), TypeError, "weight must have input's dtype"),
    ("integer_input", dict(input=torch.ones(2, 4, 5, 5, dtype=torch.int32),
                           weight=torch.ones(4, 3, 3, 3, dtype=torch.int32)), TypeError,
     "input must be a floating-point tensor"),
    ("device_mismatch", dict(weight=_W.to("meta")), ValueError,
     "weight must be on input's device cpu"),
    ("activation", dict(activation="gelu"), ValueError,
     "activation must be None, 'relu', 'relu6' or 'silu', got 'gelu'"),
))

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=(dict(N=2, C=4, K=6, H=5, W=4, R=3, S=2, stride=(2, 1), padding=(1, 0),
                      output_padding=(1, 0), dilation=(1, 1), groups=2, bias=True,
                      activation="relu", layout="channels_last"),),
    samples=_samples(), op_calls=_op_calls, bad_inputs=BAD_INPUTS)

globals().update(common_tests(SPEC))


@pytest.mark.parametrize("overrides", [dict(stride=2, output_padding=2),
                                       dict(output_padding=(0, 1)),
                                       dict(stride=2, dilation=3, output_padding=(0, 3))])
def test_output_padding_rule_is_torchs(overrides):
    """Where torch refuses an output_padding, so do we (before any kernel)."""
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(RuntimeError, match="output padding must be smaller"):
        F.conv_transpose2d(x, _W, **overrides)
    with pytest.raises(ValueError, match="output padding must be smaller"):
        ck.conv_transpose2d(x, _W, **overrides)


# Every stride / dilation / output_padding combination torch accepts per
# dimension, for strides and dilations up to 3, with padding 0 and 1.
_COMBINATIONS = [(s, d, op, p) for s, d, p in itertools.product((1, 2, 3), (1, 2, 3), (0, 1))
                 for op in range(max(s, d))]


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("algorithm", ["direct", "implicit_gemm"])
def test_every_accepted_combination(device, backend, algorithm):
    """Each (stride, dilation, output_padding, padding) torch accepts, in the
    height with the width fixed and vice versa, grouped, on each algorithm."""
    dtype = dtypes_for(device, backend)[0]
    combos = _COMBINATIONS[::5] if interpreted(device, backend) else _COMBINATIONS
    for i, (s, d, op, p) in enumerate(combos):
        for axis in (0, 1):
            other = (1, 1, 0, 0)
            s2, d2, op2, p2 = [(v, o) if axis == 0 else (o, v)
                               for v, o in zip((s, d, op, p), other, strict=True)]
            case = dict(N=2, C=4, K=2, H=3, W=2, R=2, S=3, stride=s2, padding=p2,
                        output_padding=op2, dilation=d2, groups=2, bias=True,
                        activation="relu", layout="contiguous")
            with ck.use(conv_algorithm=algorithm):
                run_case(device, backend, case, dtype, seed=i)


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_unbatched_input(device, backend):
    generator = torch.Generator().manual_seed(3)
    dtype = dtypes_for(device, backend)[0]
    x = random_tensor((3, 4, 5), dtype, device, generator=generator)
    w = random_tensor((3, 2, 2, 2), dtype, device, generator=generator)
    with ck.use(backend=backend):
        y = ck.conv_transpose2d(x, w, stride=2)
    assert_close(y, F.conv_transpose2d(float64_cpu(x), float64_cpu(w), stride=2), dtype, 12,
                 "output")


def test_nn_module_matches_torch_with_output_size():
    torch.manual_seed(0)
    reference = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    ours = ck.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    ours.load_state_dict(reference.state_dict())
    assert ours.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for output_size in (None, (10, 9), [2, 6, 10, 10]):
        expected = reference(x, output_size)
        got = ours(x, output_size)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)


def test_patch_swaps_conv_transpose2d():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(8, 4, 2, stride=2)).double()
    patched = ck.patch(copy.deepcopy(net))
    assert type(patched[2]) is ck.nn.ConvTranspose2d
    assert patched.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    out, expected = patched(x), net(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    for p, q in zip(patched.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_nn_module_fused_activation():
    layer = ck.nn.ConvTranspose2d(4, 6, 2, stride=2, activation="relu").double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = F.relu(F.conv_transpose2d(x, layer.weight, layer.bias, 2))
    torch.testing.assert_close(layer(x), expected)
