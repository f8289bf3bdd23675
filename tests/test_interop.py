"""Other libraries' arrays through the public ops (cnnkernels/_interop.py):
NumPy arrays here, CuPy arrays where CuPy and a GPU are (the lent machines)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkernels as ck


def test_numpy_arrays_in_numpy_arrays_out():
    generator = np.random.default_rng(0)
    x = generator.standard_normal((2, 3, 9, 9), dtype=np.float32)
    w = generator.standard_normal((5, 3, 3, 3), dtype=np.float32)
    y = ck.conv2d(x, w, padding=1, activation="relu")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    expected = F.relu(F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                               padding=1))
    torch.testing.assert_close(torch.from_numpy(y).double(), expected, rtol=1e-5, atol=1e-5)


def test_tuples_of_results_and_keyword_arrays_convert():
    x = np.arange(2 * 16, dtype=np.float64).reshape(1, 2, 4, 4)
    pooled, indices = ck.max_pool2d(x, 2, return_indices=True)
    assert isinstance(pooled, np.ndarray) and isinstance(indices, np.ndarray)
    expected, expected_indices = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(pooled, expected.numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], dtype=np.float32)
    iou = ck.box_iou(boxes1=boxes, boxes2=boxes)
    np.testing.assert_allclose(iou, [[1, 1 / 7], [1 / 7, 1]], rtol=1e-6)


def test_strided_views_keep_their_values():
    """A non-contiguous view goes in as it is (DLPack carries its strides)."""
    base = np.random.default_rng(1).standard_normal((4, 8, 8), dtype=np.float32)
    view = base[:, ::2, ::2][None]
    assert not view.flags.c_contiguous
    torch.testing.assert_close(torch.from_numpy(ck.adaptive_avg_pool2d(view, 1)),
                               torch.from_numpy(np.ascontiguousarray(view)).mean((2, 3),
                                                                                 keepdim=True))


def test_tensors_pass_through_untouched():
    x = torch.randn(1, 2, 5, 5)
    assert isinstance(ck.avg_pool2d(x, 2), torch.Tensor)


@pytest.mark.cuda
def test_cupy_arrays_on_cupys_stream():
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x = cupy.random.standard_normal((2, 8, 16, 16), dtype=cupy.float32)
        w = cupy.random.standard_normal((8, 8, 3, 3), dtype=cupy.float32)
        y = ck.conv2d(x, w, padding=1)
        assert isinstance(y, cupy.ndarray)
        expected = F.conv2d(torch.from_dlpack(x), torch.from_dlpack(w), padding=1)
        stream.synchronize()
    torch.testing.assert_close(torch.from_dlpack(y), expected, rtol=1e-4, atol=1e-4)
