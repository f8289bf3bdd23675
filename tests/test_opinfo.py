"""PyTorch's own OpInfo sample and error inputs
(``torch.testing._internal.common_methods_invocations.op_db``) as a peer
suite for every op with a torch twin: on each sample our function returns
torch's result (values, indices, the input and weight gradients), and on
each error input it raises instead of returning something. The cpu backend
runs every sample; Triton's interpreter runs them under the ``slow`` marker.
"""

import pytest
import torch
from conftest import backend_params
from reference import assert_close
from torch.testing._internal.common_methods_invocations import op_db

import cnnkernels as ck

# torch's name -> ours, for every op family with a torch twin.
TWINS = {
    "nn.functional.conv2d": ck.conv2d,
    "nn.functional.conv_transpose2d": ck.conv_transpose2d,
    "nn.functional.max_pool2d": ck.max_pool2d,
    "nn.functional.avg_pool2d": ck.avg_pool2d,
    "nn.functional.adaptive_avg_pool2d": ck.adaptive_avg_pool2d,
    "nn.functional.adaptive_max_pool2d": ck.adaptive_max_pool2d,
    "nn.functional.triplet_margin_loss": ck.triplet_margin_loss,
}
OPINFOS = [op for op in op_db if op.name in TWINS]


def _backends():
    params = []
    for p in backend_params():
        if p.values[0] != "cpu":
            continue
        marks = [*p.marks, *([pytest.mark.slow] if p.values[1] == "triton" else [])]
        params.append(pytest.param(*p.values, id=p.id, marks=marks))
    return params


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def test_every_twin_has_opinfos():
    assert {op.name for op in OPINFOS} == set(TWINS)


@pytest.mark.parametrize(("device", "backend"), _backends())
@pytest.mark.parametrize("opinfo", OPINFOS, ids=lambda op: op.name.split(".")[-1])
def test_sample_inputs_match_torch(opinfo, device, backend):
    ours = TWINS[opinfo.name]
    for sample in opinfo.sample_inputs(device, torch.float64, requires_grad=True):
        leaves = [t for t in (sample.input, *sample.args) if isinstance(t, torch.Tensor)
                  and t.requires_grad]
        expected = _outputs(opinfo.op(sample.input, *sample.args, **sample.kwargs))
        with ck.use(backend=backend):
            actual = _outputs(ours(sample.input, *sample.args, **sample.kwargs))
        what = f"{opinfo.name} on {sample.summary()}"
        assert len(actual) == len(expected), what
        for a, e in zip(actual, expected, strict=True):
            if e.is_floating_point():
                assert_close(a, e.detach(), torch.float64, 1000, what)
            else:
                assert torch.equal(a, e), f"{what}: indices differ"
        if actual[0].numel():
            grads = torch.autograd.grad(actual[0].square().sum(), leaves)
            expected_grads = torch.autograd.grad(expected[0].square().sum(), leaves)
            for a, e in zip(grads, expected_grads, strict=True):
                assert_close(a, e, torch.float64, 1000, f"gradient of {what}")


@pytest.mark.parametrize("opinfo", [op for op in OPINFOS if op.error_inputs_func],
                         ids=lambda op: op.name.split(".")[-1])
def test_error_inputs_raise(opinfo):
    ours = TWINS[opinfo.name]
    for error in opinfo.error_inputs("cpu"):
        sample = error.sample_input
        with ck.use(backend="cpu"), pytest.raises((ValueError, TypeError, RuntimeError)):
            ours(sample.input, *sample.args, **sample.kwargs)
