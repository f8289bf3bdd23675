"""cnnkernels.nn's modules and cnnkernels.patch as drop-ins for torch.nn's."""

import copy

import pytest
import torch
from reference import assert_close

import cnnkernels as ck


def small_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 1, 1),
        torch.nn.Conv2d(8, 8, 3, stride=2, groups=4, bias=False),
        torch.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        torch.nn.Conv2d(8, 4, 1, padding_mode="reflect"),
        torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
        torch.nn.AdaptiveMaxPool2d((3, 2)),
        torch.nn.AdaptiveAvgPool2d(1),
    ).double()


def test_patch_matches_torch_forward_and_backward():
    torch.manual_seed(0)
    reference_net = small_net()
    patched = ck.patch(copy.deepcopy(reference_net))
    assert all(type(m).__module__ == "cnnkernels.nn" for m in patched.modules()
               if isinstance(m, torch.nn.Conv2d | torch.nn.MaxPool2d | torch.nn.AvgPool2d |
                             torch.nn.AdaptiveAvgPool2d | torch.nn.AdaptiveMaxPool2d))
    assert patched.state_dict().keys() == reference_net.state_dict().keys()
    x = torch.randn(2, 3, 15, 13, dtype=torch.float64)
    with ck.use(backend="cpu"):
        out = patched(x)
        out.square().sum().backward()
    expected = reference_net(x)
    expected.square().sum().backward()
    assert_close(out, expected, torch.float64, 100, "output")
    for (name, p), q in zip(patched.named_parameters(), reference_net.parameters(), strict=True):
        assert_close(p.grad, q.grad, torch.float64, 1000, f"grad of {name}")


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
def test_module_fuses_activation(activation):
    torch.manual_seed(1)
    conv = ck.nn.Conv2d(4, 6, 3, padding=1, activation=activation).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64) * 4
    act = getattr(torch.nn.functional, activation)
    expected = act(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    assert_close(conv(x), expected, torch.float64, 36, "output")
    assert f"activation={activation!r}" in repr(conv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_patched_model_under_autocast_returns_what_torch_returns(dtype):
    """Mixed precision as in training scripts: float32 model and input under
    CPU autocast; the output's dtype and value and the gradients as torch's."""
    torch.manual_seed(2)
    reference_net = small_net().float()
    patched = ck.patch(copy.deepcopy(reference_net))
    x = torch.randn(2, 3, 15, 13)
    with torch.autocast("cpu", dtype=dtype):
        out = patched(x)
        expected = reference_net(x)
    assert out.dtype == expected.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)
    # Training under autocast: float32 gradients of the float32 parameters.
    out.float().square().sum().backward()
    expected.float().square().sum().backward()
    for p, q in zip(patched.parameters(), reference_net.parameters(), strict=True):
        assert p.grad.dtype == q.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2 * q.grad.abs().max())


def test_module_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be None, 'relu', 'relu6' or 'silu'"):
        ck.nn.Conv2d(1, 1, 1, activation="tanh")
