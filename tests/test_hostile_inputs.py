"""Hostile inputs: for every input either torch's answer or a clear error
naming the argument, never a silent wrong result, a crash or a hang. One
regression test per finding of the audit (issue 7), named after it: W1-W6
(silently wrong), the hangs, the differences from torch, the unclear errors.
Random hostile inputs are in test_fuzz.py."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params
from torch.autograd import forward_ad

import cnnkernels as ck
from cnnkernels import _args, _backend
from cnnkernels.ops.conv2d import conv2d_grad_input_op
from cnnkernels.ops.pool2d import avg_pool2d_op

CPU_BACKENDS = [p for p in backend_params() if p.values[0] == "cpu"]


def _escape(message: str) -> str:
    return re.escape(message)


# W1: a fused activation keeps NaN (and inf - inf) like torch's relu / relu6 / silu.

@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
def test_w1_fused_activation_propagates_nan(device, backend, activation):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 2, 2] = float("inf")
    w = torch.randn(3, 2, 3, 3, generator=generator, dtype=torch.float64)
    w[1, 1] = -w[1, 1].abs()
    w[1, 1, 0, 0] = 1.0  # output channel 1 sums inf and -inf somewhere: NaN
    x.requires_grad_()
    w.requires_grad_()
    expected = getattr(F, activation)(F.conv2d(x, w, padding=1))
    assert expected.isnan().any()
    dtype = torch.float64 if backend != "triton" or device == "cpu" else torch.float32
    with ck.use(backend=backend):
        output = ck.conv2d(x.to(device, dtype), w.to(device, dtype), padding=1,
                           activation=activation)
    torch.testing.assert_close(output.double().cpu(), expected, equal_nan=True,
                               rtol=1e-5, atol=1e-5)
    if device != "cpu":
        return  # the gradients below compare leaves on the CPU
    # Gradients as torch's threshold / hardtanh / silu backward give them: a
    # flat activation stops a NaN gradient; a NaN output passes it through
    # relu and stops it at relu6; silu passes both.
    grad_y = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    grad_y[expected.detach() <= 0] = float("nan")
    with ck.use(backend=backend):
        grads = torch.autograd.grad(output, (x, w), grad_y)
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, (x, w), grad_y),
                                   strict=True):
        torch.testing.assert_close(grad, expected_grad, equal_nan=True)


# W2: forward-mode AD and torch.func (every sample: harness.py's
# test_torch_func_transforms_match_torch); the reproducers of the audit.

def test_w2_jvp_of_conv2d_is_not_zero():
    generator = torch.Generator().manual_seed(2)
    x, v = (torch.randn(1, 2, 5, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    w = torch.randn(3, 2, 3, 3, generator=generator, dtype=torch.float64)
    tangent = torch.func.jvp(lambda t: ck.conv2d(t, w), (x,), (v,))[1]
    torch.testing.assert_close(tangent, torch.func.jvp(lambda t: F.conv2d(t, w), (x,), (v,))[1])
    grad = torch.func.grad(lambda t: ck.conv2d(t, w).sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(lambda t: F.conv2d(t, w).sum())(x))


def test_w2_registered_ops_have_forward_mode_too():
    """A direct call of a registered op: dual tensors get the jvp (its
    Autograd kernel is the derivatives' Function), under torch.compile too;
    torch.func's transforms, which need the public function, raise clearly
    instead of returning a zero tangent."""
    x, v = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(1, 1, 4, 4,
                                                                     dtype=torch.float64)
    window = ([2, 2], [2, 2], [0, 0], False, True, None, "cpu")
    expected = F.avg_pool2d(v, 2)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(
            torch.ops.cnnk.avg_pool2d(forward_ad.make_dual(x, v), *window)).tangent
        compiled = torch.compile(lambda t: ck.avg_pool2d(t, 2), backend="eager")
        compiled_tangent = forward_ad.unpack_dual(compiled(forward_ad.make_dual(x, v))).tangent
    torch.testing.assert_close(tangent, expected)
    torch.testing.assert_close(compiled_tangent, expected)
    with pytest.raises(RuntimeError, match=_escape("called directly under a torch.func transform")):
        torch.func.jvp(lambda t: torch.ops.cnnk.avg_pool2d(t, *window), (x,), (v,))


@pytest.mark.parametrize("pool", [ck.max_pool2d, ck.avg_pool2d], ids=["max", "avg"])
def test_w2_dual_tensors_through_pooling_have_tangents(pool):
    x, v = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.randn(1, 2, 6, 6,
                                                                     dtype=torch.float64)
    reference = F.max_pool2d if pool is ck.max_pool2d else F.avg_pool2d
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(pool(forward_ad.make_dual(x, v), 3, 2, 1)).tangent
        expected = forward_ad.unpack_dual(reference(forward_ad.make_dual(x, v), 3, 2, 1)).tangent
    torch.testing.assert_close(tangent, expected)


# W3, W4: the 32-bit backends check every value their index arithmetic
# reaches (the geometry's index_extent), not only tensor offsets; the cpu
# backend computes those cases.

def test_w3_conv_with_huge_padding_and_dilation():
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    w = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    args = dict(padding=2**30, dilation=2**30, stride=2**31)
    with ck.use(backend="cpu"):
        torch.testing.assert_close(ck.conv2d(x, w, **args), F.conv2d(x, w, **args))
    if _backend.backend_problem("triton", x.device) is None:
        with ck.use(backend="triton"), pytest.raises(ValueError, match="indexes with 32 bits"):
            ck.conv2d(x, w, **args)


def test_w4_adaptive_pooling_past_two_to_the_31():
    x = torch.randn(1, 1, 50000, 1, dtype=torch.float64)
    with ck.use(backend="cpu"):
        torch.testing.assert_close(ck.adaptive_avg_pool2d(x, (50000, 1)),
                                   F.adaptive_avg_pool2d(x, (50000, 1)))
    if _backend.backend_problem("triton", x.device) is None:
        with ck.use(backend="triton"), pytest.raises(ValueError, match="indexes with 32 bits"):
            ck.adaptive_avg_pool2d(x, (50000, 1))


# W5, W6, UBSan: geometry arithmetic can no longer overflow int64; the
# registered ops validate like the public functions.

def test_w5_huge_average_window_is_refused_like_torch():
    with pytest.raises(ValueError, match=_escape("kernel_size must be in [1, 2147483647]")):
        ck.avg_pool2d(torch.randn(1, 1, 4, 4), 2**40, padding=2**39)


def test_w6_registered_ops_validate_like_the_public_functions():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="kernel_size must be in"):
        avg_pool2d_op.custom_op(x, [2**40, 2], [1, 1], [0, 0], False, True, None, "cpu")
    with pytest.raises(ValueError, match="padded input height"):
        torch.ops.cnnk.conv2d(x, torch.randn(3, 2, 3, 3), None, None, [1, 1], [2**62] * 4,
                              [2**62, 1], 1, "none", False, "auto", "cpu")


def test_asan_left_padding_wider_than_the_padded_row():
    """One output column (a huge stride, taken as 1) and a left padding wider
    than the rows the taps read: the cpu implicit GEMM's zero-padded copy
    copied a negative range of input columns (heap corruption, an abort)."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(1, 9, 4, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(6, 3, 2, 1, generator=generator, dtype=torch.float64)
    params = dict(stride=2**62, padding=(1, 3), dilation=2, groups=3)
    with ck.use(backend="cpu", conv_algorithm="implicit_gemm"):
        torch.testing.assert_close(ck.conv2d(x, w, **params), F.conv2d(x, w, **params))


def test_ubsan_largest_stride_is_torchs_answer():
    x, w = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.randn(3, 2, 3, 3,
                                                                      dtype=torch.float64)
    with ck.use(backend="cpu"):
        torch.testing.assert_close(ck.conv2d(x, w, stride=2**63 - 1),
                                   F.conv2d(x, w, stride=2**63 - 1))


def test_ubsan_padding_and_dilation_near_two_to_the_62_are_refused():
    with pytest.raises(ValueError, match="is too large"):
        ck.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3), padding=2**62,
                  dilation=2**62)


# Hangs: windows far larger than the input cost nothing extra.

def test_hang_cpu_huge_window_finishes():
    """The audit's reproducer in a subprocess with a deadline (before the fix
    the cpu backward looped over 2^31 taps per element)."""
    code = ("import torch, cnnkernels as ck\n"
            "x = torch.randn(2, 3, 9, 7, requires_grad=True)\n"
            "with ck.use(backend='cpu'):\n"
            "    for pool in (ck.max_pool2d, ck.avg_pool2d):\n"
            "        torch.autograd.grad(pool(x, 2**31 - 1, 1, 2**30 - 1).sum(), x)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("device", "backend"), CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_hang_window_much_larger_than_the_input(device, backend, kind):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    ours, theirs = (ck.max_pool2d, F.max_pool2d) if kind == "max" else \
        (ck.avg_pool2d, F.avg_pool2d)
    kernel, padding = (2**31 - 1, 2**30 - 1) if backend == "cpu" else (301, 150)
    with ck.use(backend=backend):
        y = ours(x, kernel, 1, padding)
        (grad,) = torch.autograd.grad(y.square().sum(), x)
    expected = theirs(x, kernel, 1, padding)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize(("device", "backend"), CPU_BACKENDS)
def test_max_window_wholly_in_the_padding(device, backend):
    """Found by the fuzzing: with dilation a window can miss the input
    entirely. Forward as torch (-inf, the index past the plane torch gives);
    the backward writes nothing outside grad_input (torch's does) and gives
    no gradient to anything."""
    x = torch.tensor([[[[1.5, -0.25]], [[-2.0, 0.5]]]], dtype=torch.float64,
                     requires_grad=True)
    args = dict(kernel_size=2, padding=1, dilation=2, return_indices=True)
    with ck.use(backend=backend):
        y, indices = ck.max_pool2d(x, **args)
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    with torch.no_grad():
        expected, expected_indices = F.max_pool2d(x, **args)
    torch.testing.assert_close(y, expected)
    assert torch.equal(indices, expected_indices) and bool((indices >= 2).all())
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_max_window_with_no_column_inside(device, backend):
    """A dilated window with rows inside the input but no column: -inf and
    torch's index (which wraps to another row's element); every backend
    gives that element no gradient (torch's backward gives it one)."""
    dtype = torch.float64 if backend != "triton" or device == "cpu" else torch.float32
    x = torch.randn(1, 2, 5, 2, dtype=dtype, device=device, requires_grad=True)
    args = dict(kernel_size=(3, 2), stride=1, padding=1, dilation=3, return_indices=True)
    with ck.use(backend=backend):
        y, indices = ck.max_pool2d(x, **args)
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    with torch.no_grad():
        expected, expected_indices = F.max_pool2d(x.double().cpu(), **args)
    torch.testing.assert_close(y.double().cpu(), expected)
    assert torch.equal(indices.cpu(), expected_indices)
    assert torch.equal(grad, torch.zeros_like(x))


# Differences from torch: what torch accepts we accept, what it refuses we
# refuse.

NUMPY_AND_TENSOR_INTS = [np.int64(2), np.int32(2), torch.tensor(2)]


@pytest.mark.parametrize("value", NUMPY_AND_TENSOR_INTS, ids=["np.int64", "np.int32", "0-d"])
def test_numpy_and_zero_dim_tensor_integers(value):
    """Every int argument torch takes in these forms (adaptive output sizes
    too, which torch's functional wrappers refuse)."""
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)
    for ours, theirs in [
        (lambda: ck.conv2d(x, w, stride=value, padding=value, dilation=value, groups=value),
         lambda: F.conv2d(x, w, stride=value, padding=value, dilation=value, groups=value)),
        (lambda: ck.max_pool2d(x, value, stride=value, padding=1, dilation=value),
         lambda: F.max_pool2d(x, value, stride=value, padding=1, dilation=value)),
        (lambda: ck.avg_pool2d(x, value, divisor_override=value),
         lambda: F.avg_pool2d(x, value, divisor_override=value)),
        (lambda: ck.adaptive_avg_pool2d(x, value), lambda: F.adaptive_avg_pool2d(x, 2)),
        (lambda: ck.adaptive_max_pool2d(x, value), lambda: F.adaptive_max_pool2d(x, 2)),
    ]:
        torch.testing.assert_close(ours(), theirs())


def test_other_argument_forms_torch_takes():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ck.max_pool2d(x, 2, return_indices=0),
                               F.max_pool2d(x, 2, return_indices=0))
    torch.testing.assert_close(ck.avg_pool2d(x, 2, divisor_override=2**40),
                               F.avg_pool2d(x, 2, divisor_override=2**40))
    torch.testing.assert_close(ck.max_pool2d(x, 2, stride=torch.tensor([2])),
                               F.max_pool2d(x, 2, stride=torch.tensor([2])))
    torch.testing.assert_close(ck.avg_pool2d(x, 2, ceil_mode=np.bool_(True)),
                               F.avg_pool2d(x, 2, ceil_mode=True))
    w = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    with ck.use(backend="cpu"):  # a 1x1 filter's dilation is irrelevant
        torch.testing.assert_close(ck.conv2d(x, w, dilation=2**62),
                                   F.conv2d(x, w, dilation=2**62))


def test_scratch_memory_exhaustion_is_an_error_not_an_abort():
    """The cpu kernels allocate their scratch before the threads start: out
    of memory is a RuntimeError (in a subprocess with a capped address space).
    Overlapping windows, so that the float16 max backward scatters into a
    float plane of scratch (disjoint windows gather without one)."""
    code = ("import resource, torch, cnnkernels as ck\n"
            "from cnnkernels.ops.pool2d import max_pool2d_op, max_pool2d_backward_op\n"
            "x = torch.randn(1, 1, 8192, 8192, dtype=torch.float16)\n"
            "y, i = max_pool2d_op(x, [4096, 4096], [2048, 2048], [0, 0], [1, 1], False, True,"
            " 'cpu')\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20,) * 2)\n"
            "try:\n"
            "    max_pool2d_backward_op(torch.ones_like(y), i, x, [4096, 4096], [2048, 2048],"
            " [0, 0], [1, 1], False, 'cpu')\n"
            "except RuntimeError as error:\n"
            "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not enough host memory for the kernel's scratch" in result.stdout


@pytest.mark.parametrize("value", ["False", 1, None])
def test_flags_must_be_bools_like_torch(value):
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(TypeError):
        F.max_pool2d(x, 2, ceil_mode=value)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        ck.max_pool2d(x, 2, ceil_mode=value)
    with pytest.raises(TypeError, match="count_include_pad must be a bool"):
        ck.avg_pool2d(x, 2, count_include_pad=value)


def test_meta_tensors_run_the_fake_implementation():
    x, w = torch.randn(2, 3, 9, 8, device="meta"), torch.randn(4, 3, 3, 3, device="meta")
    assert ck.conv2d(x, w, padding=1).shape == F.conv2d(x, w, padding=1).shape
    assert ck.max_pool2d(x, 3, 2).shape == F.max_pool2d(x, 3, 2).shape
    assert ck.adaptive_avg_pool2d(x, 2).device.type == "meta"


def test_adaptive_average_of_zero_channels_is_empty_like_torch():
    x = torch.randn(2, 0, 4, 4)
    assert ck.adaptive_avg_pool2d(x, 2).shape == F.adaptive_avg_pool2d(x, 2).shape


def test_empty_planes_where_torch_takes_them():
    """torch's average of an empty plane into 1 x 1 is NaN (into more it
    refuses); a conv of an empty batch may have an empty plane, if padding
    leaves an output."""
    x = torch.randn(2, 3, 0, 4)
    torch.testing.assert_close(ck.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1),
                               equal_nan=True)
    assert ck.adaptive_avg_pool2d(x, 1).isnan().all()
    with pytest.raises(ValueError, match="non-zero height and width"):
        ck.adaptive_avg_pool2d(x, 2)
    x, w = torch.randn(0, 3, 0, 4), torch.randn(5, 3, 1, 1)
    assert ck.conv2d(x, w, padding=1).shape == F.conv2d(x, w, padding=1).shape == (0, 5, 2, 6)
    with pytest.raises(ValueError, match="non-zero height and width unless the batch is empty"):
        ck.conv2d(torch.randn(1, 3, 0, 4), w, padding=1)


@pytest.mark.parametrize(("device", "backend"), CPU_BACKENDS)
@pytest.mark.parametrize("layouts", [("channels_last", "contiguous"),
                                     ("contiguous", "channels_last")])
def test_gradient_memory_format_follows_torch(device, backend, layouts):
    """With a contiguous grad_output and the input or the weight
    channels_last, torch returns both gradients channels_last."""
    formats = [torch.channels_last if name == "channels_last" else torch.contiguous_format
               for name in layouts]
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64).contiguous(memory_format=formats[0])
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64).contiguous(memory_format=formats[1])
    x.requires_grad_()
    w.requires_grad_()
    with ck.use(backend=backend):
        y = ck.conv2d(x, w)
        grads = torch.autograd.grad(y, (x, w), torch.randn(y.shape, dtype=torch.float64))
    y_ref = F.conv2d(x, w)
    expected = torch.autograd.grad(y_ref, (x, w), torch.randn(y_ref.shape, dtype=torch.float64))
    for grad, expected_grad in zip(grads, expected, strict=True):
        assert _args.is_channels_last(grad) == _args.is_channels_last(expected_grad)


def test_cpu_backend_has_no_32_bit_limit():
    """The cpu kernels use 64-bit offsets: only the cuda and triton backends
    refuse tensors past 2^31 elements."""
    huge = torch.empty(1).expand(2**16, 2**16)[None, None]
    assert _backend.runnable("cpu", "op", {"input": huge}, 2**40) == "cpu"
    _args.check_index_range({"input": torch.empty(1).expand(2**15, 2**15)[None, None]}, "cuda")
    with pytest.raises(ValueError, match=_escape("has 4294967296 elements; backend 'cuda'")):
        _args.check_index_range({"input": huge}, "cuda")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda x: x.to_sparse(), "layout torch.sparse_coo"),
    (lambda x: torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), "a quantized tensor"),
    (lambda x: x.to_mkldnn(), "layout torch._mkldnn"),
    (lambda x: torch.nested.nested_tensor([x[0], x[0]]), "a nested tensor"),
], ids=["sparse", "quantized", "mkldnn", "nested"])
def test_other_layouts_get_a_clear_error(make, kind):
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(TypeError, match=_escape(f"input must be a dense (strided) tensor, got "
                                                f"{kind}")):
        ck.max_pool2d(make(x), 2)


# Unclear errors: every error names the argument, the value and what is
# expected, before any kernel runs.

UNCLEAR_ERRORS = [
    ("zero_kernel_dim", lambda: ck.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 0, 3)),
     ValueError, "the kernel size (weight.shape[2:]) must be greater than zero, got (0, 3)"),
    ("empty_plane_with_padding",
     lambda: ck.conv2d(torch.randn(1, 2, 0, 5), torch.randn(3, 2, 3, 3), padding=2),
     ValueError, "input must have non-zero height and width"),
    ("int_past_int64", lambda: ck.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3),
                                         stride=2**63),
     ValueError, "stride must fit a 64-bit integer, got 9223372036854775808"),
    ("pool_int_past_int64", lambda: ck.max_pool2d(torch.randn(1, 1, 4, 4), 2**64),
     ValueError, "kernel_size must fit a 64-bit integer"),
    ("activation_list", lambda: ck.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3),
                                          activation=["relu"]),
     ValueError, "activation must be None, 'relu', 'relu6' or 'silu', got ['relu']"),
    ("bias_list", lambda: ck.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3),
                                    [1.0, 2.0, 3.0]),
     TypeError, "bias must be a torch.Tensor, got list"),
    ("one_dimensional_output", lambda: conv2d_grad_input_op.custom_op(
        torch.randn(1, 3, 4, 4), torch.randn(3), torch.randn(1, 2, 6, 6),
        torch.randn(3, 2, 3, 3), [1, 1], [0, 0, 0, 0], [1, 1], 1, "relu", "auto", "cpu"),
     ValueError, "output must be 4-D, got a 1-D tensor of shape (3,)"),
    ("expanded_input", lambda: _args.check_index_range(
        {"input": torch.empty(1).expand(2**16, 2**16)[None, None]}, "triton"),
     ValueError, "input of shape (1, 1, 65536, 65536) has 4294967296 elements"),
    ("expanded_stride", lambda: _args.check_index_range(
        {"input": torch.empty(2**31 + 1)[:: 2**31]}, "cuda"),
     ValueError, "input of shape (2,) spans 2147483649 elements of memory"),
]


@pytest.mark.parametrize(("call", "error", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in UNCLEAR_ERRORS])
def test_unclear_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=_escape(message)):
        call()
