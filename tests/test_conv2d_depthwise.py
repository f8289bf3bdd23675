"""The GPU backends' depthwise algorithm (kernels/conv2d/depthwise.py in
Triton, csrc/cuda/conv2d/depthwise.cu) against float64 torch: forward,
grad_input, grad_weight and grad_bias over random depthwise cases and the
edges of the specialised (3x3, 5x5 at stride 1 and 2) and general paths,
both layouts, non-contiguous views, the epilogue, the split weight-gradient
reduction and its determinism. Triton runs in the interpreter without a GPU
(tiny shapes); the CUDA cases are skipped without one. The epilogue on every
algorithm and the router are in test_conv2d.py."""

import pytest
import torch
from conftest import backend_params, dtypes_for, interpreted
from reference import assert_close, float64_cpu, random_tensor
from test_conv2d import depthwise_case, run_case

import cnnkernels as ck
from cnnkernels import _ext
from cnnkernels.ops.conv2d import _geometry, conv2d_grad_weight_op

GPU_PARAMS = [p for p in backend_params() if p.values[1] in ("triton", "cuda")]


@pytest.mark.parametrize(("device", "backend"), GPU_PARAMS)
@pytest.mark.parametrize("seed", range(10))
def test_depthwise_matches_torch(device, backend, seed):
    """Random depthwise cases (multiplier 1 or 2, 3x3, 5x5 and non-square
    filters, strides up to 3, dilation, every padding form and layout, a
    random epilogue), every dtype of the backend in turn."""
    dtypes = dtypes_for(device, backend)
    with ck.use(conv_algorithm="depthwise"):
        run_case(device, backend, depthwise_case(5000 + seed, True), dtypes[seed % len(dtypes)],
                 seed)


EDGES = {
    # Each specialised filter, both layouts, multiplier 1 and 2.
    "3x3_s1_cl": dict(C=6, K=6, H=7, W=6, R=3, S=3, stride=(1, 1), padding=1,
                      layout="channels_last"),
    "3x3_s2": dict(C=3, K=6, H=7, W=8, R=3, S=3, stride=(2, 2), padding=(0, 1)),
    "5x5_s1": dict(C=3, K=3, H=6, W=7, R=5, S=5, stride=(1, 1), padding=2,
                   residual="channels_last", activation="silu"),
    "5x5_s2_cl": dict(C=5, K=10, H=9, W=7, R=5, S=5, stride=(2, 2), padding=2,
                      layout="channels_last", activation="relu6"),
    # The general path: 7x7, stride 3, dilation, non-square, "same".
    "7x7": dict(C=2, K=4, H=8, W=7, R=7, S=7, stride=(1, 1), padding=3),
    "stride3_dilated": dict(C=3, K=3, H=11, W=10, R=3, S=2, stride=(3, 2), padding=(2, 1),
                            dilation=(2, 3), layout="noncontiguous"),
    "same_nonsquare": dict(C=4, K=8, H=6, W=7, R=2, S=5, stride=(1, 1), padding="same",
                           dilation=(2, 1), layout="channels_last", residual="noncontiguous"),
    # Stride over the kernel (input pixels no tap reads), padding past the
    # filter (taps reading only padding), a weight in channels_last.
    "stride_over_kernel": dict(C=3, K=3, H=8, W=8, R=2, S=2, stride=(3, 3), padding=0),
    "big_padding": dict(C=2, K=2, H=4, W=5, R=3, S=3, stride=(1, 1), padding=(4, 3),
                        layout="weight_channels_last"),
    # One input channel, groups 1, multiplier 6 (LeNet's first layer).
    "one_channel": dict(C=1, K=6, H=8, W=8, R=5, S=5, stride=(1, 1), padding=0, groups=1),
}


@pytest.mark.parametrize(("device", "backend"), GPU_PARAMS)
@pytest.mark.parametrize("case", EDGES.values(), ids=EDGES.keys())
def test_depthwise_edges(device, backend, case):
    full = dict(N=2, dilation=(1, 1), groups=case["C"], bias=True, activation="relu",
                layout="contiguous")
    full.update(case)
    with ck.use(conv_algorithm="depthwise"):
        run_case(device, backend, full, dtypes_for(device, backend)[0], seed=17)


@pytest.mark.parametrize(("device", "backend"), GPU_PARAMS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_depthwise_grad_weight_is_deterministic(device, backend, layout):
    """The split reduction's order is fixed by the shape: bit-identical
    runs, and a split there is (Triton's split count in the interpreter's
    tiles or the GPU's; the CUDA launcher's workspace)."""
    generator = torch.Generator().manual_seed(6)
    dtype = dtypes_for(device, backend)[0]
    size = 12 if interpreted(device, backend) else 48  # CUDA splits past 2048 pixels
    x = random_tensor((2, 4, size, size), dtype, device, generator=generator)
    x = x.to(memory_format=layout)
    w = random_tensor((4, 1, 3, 3), dtype, device, generator=generator)
    gy = random_tensor((2, 4, size, size), dtype, device, generator=generator)
    params = ([1, 1], [1, 1, 1, 1], [1, 1], 4)
    g = _geometry(x, w, None, *params, "none", "depthwise")
    if backend == "triton":
        from cnnkernels.kernels.conv2d import depthwise

        assert depthwise.grad_weight_splits(g, depthwise._grad_weight_blocks(g, x))[0] > 1
    else:
        assert _ext.cuda_kernels().conv2d_depthwise_grad_weight_workspace_bytes(
            _ext.dtype_code(dtype), g) > 0
    runs = [conv2d_grad_weight_op(gy, None, x, w, *params, "none", "depthwise", backend)
            for _ in range(2)]
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)
    reference = torch.ops.aten.convolution_backward(
        float64_cpu(gy), float64_cpu(x), float64_cpu(w), [4], (1, 1), (1, 1), (1, 1), False,
        (0, 0), 4, (False, True, True))
    assert_close(runs[0][0], reference[1], dtype, 2 * size * size, "grad_weight")
    assert_close(runs[0][1], reference[2], dtype, 2 * size * size, "grad_bias")


@pytest.mark.parametrize(("device", "backend"), GPU_PARAMS)
def test_depthwise_empty_batch(device, backend):
    """No images: an empty output and zero weight and bias gradients."""
    dtype = dtypes_for(device, backend)[0]
    x = torch.randn(0, 3, 5, 5, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(6, dtype=dtype, device=device, requires_grad=True)
    with ck.use(backend=backend, conv_algorithm="depthwise"):
        y = ck.conv2d(x, w, b, padding=1, groups=3, activation="relu")
        y.sum().backward()
    assert y.shape == (0, 6, 5, 5)
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


CUDA_PARAMS = [p for p in GPU_PARAMS if p.values[0] == "cuda"]


@pytest.mark.parametrize(("device", "backend"), CUDA_PARAMS)
@pytest.mark.parametrize("case", [
    # MobileNet-like layers: long rows, channels past one channel tile, a
    # reduction split over many programs; every dtype.
    dict(N=3, C=40, K=40, H=29, W=31, R=3, S=3, stride=(1, 1), padding=1,
         layout="channels_last", activation="relu6"),
    dict(N=2, C=24, K=48, H=30, W=33, R=5, S=5, stride=(2, 2), padding=2, activation="silu",
         residual="contiguous"),
    dict(N=2, C=16, K=16, H=21, W=20, R=3, S=3, stride=(2, 1), padding=(1, 0),
         dilation=(2, 2), layout="noncontiguous"),
], ids=["3x3_cl", "5x5_s2", "general"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=str)
def test_depthwise_larger_layers_on_the_gpu(device, backend, case, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("Triton computes float64 in the interpreter only")
    full = dict(dilation=(1, 1), groups=case["C"], bias=True, activation=None,
                layout="contiguous")
    full.update(case)
    with ck.use(conv_algorithm="depthwise"):
        run_case(device, backend, full, dtype, seed=23)


@pytest.mark.parametrize(("device", "backend"), GPU_PARAMS)
def test_depthwise_bad_input_raises_before_any_kernel(device, backend):
    """A geometry that is not depthwise, and one whose index arithmetic
    passes 32 bits, are refused with errors that say so."""
    x = torch.randn(1, 4, 3, 3, device=device)
    with ck.use(backend=backend, conv_algorithm="depthwise"):
        with pytest.raises(ValueError, match="'depthwise' takes one input channel per group"):
            ck.conv2d(x, torch.randn(2, 4, 2, 2, device=device))
        with pytest.raises(ValueError, match="indexes with 32 bits"):
            ck.conv2d(x, torch.randn(4, 1, 2, 2, device=device), stride=2**31,
                      padding=2**30, dilation=2**30, groups=4)
