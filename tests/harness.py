"""The tests every op family gets from its spec: DESIGN.md's correctness
method written once. A family's test module builds a ``FamilySpec`` and adds
the tests to its namespace:

    globals().update(harness.common_tests(SPEC))

which gives, each parametrized over every backend that can run here (CUDA
ones marked ``cuda``, skipped without a GPU):

- test_random_cases_match_torch: random cases (``random_case``), one dtype
  each in turn, checked against the float64 reference by ``run_case``, the
  family's comparison (layouts, non-contiguous views, poisoned outputs);
- test_every_dtype: ``dtype_cases`` in every dtype the backend declares;
- test_empty_batch: every sample with batch 0: torch's shapes, torch's
  gradients (zero sums);
- test_backward_is_deterministic: every sample twice, bitwise equal gradients;
- test_opcheck: ``torch.library.opcheck`` on every operator (``op_calls``);
- test_derivatives_match_finite_differences: gradcheck and gradgradcheck
  (first and second derivatives) of every sample in float64, on every
  backend that computes it (cpu, cuda, and Triton interpreted: in
  gradcheck's fast mode, a random projection of the Jacobian, since the full
  one takes minutes there), reverse and forward mode;
- test_torch_func_transforms_match_torch: torch.func.grad, jvp and vmap and
  forward-AD dual tensors against torch's, in float64;
- test_torch_compile_fullgraph: every sample under ``torch.compile``
  (inductor) on the cpu backend: eager's values and gradients;
- test_autocast_matches_torch: every sample under autocast, forward and
  backward: torch's dtypes and values;
- test_bad_input_raises_before_any_kernel: ``bad_inputs``.

The family's module keeps only what is its own (index ties, split
reductions, fused activations, the op-level validation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import backend_params, dtype_params, dtypes_for, interpreted, seeded_params
from reference import assert_close
from torch.autograd import forward_ad

import cnnkernels as ck


@dataclass(frozen=True)
class Sample:
    """One call of a public function on small inputs: ``ours(*inputs)`` and
    ``reference(*inputs)``, the same call to torch, with ``inputs =
    make(dtype, device, generator, batch)``. Its floating-point tensors are
    what the gradient tests differentiate; ``reduction`` is the longest sum
    one output element takes (the tolerance's length)."""

    name: str
    ours: Callable
    reference: Callable
    make: Callable[[torch.dtype, str, torch.Generator, int], tuple]
    reduction: int


@dataclass(frozen=True)
class FamilySpec:
    """What the common tests need of a family (see the module docstring)."""

    random_case: Callable[[int, bool], dict]  # (seed, tiny: the interpreter runs it)
    run_case: Callable[[str, str, dict, torch.dtype, int], None]  # device, backend, case, ...
    dtype_cases: tuple[dict, ...]
    samples: tuple[Sample, ...]
    op_calls: Callable[[str, str, torch.dtype], list]  # device, backend, dtype -> [(op, args)]
    bad_inputs: tuple  # (id, call, exception type, message)
    seeds: tuple[int, int] = (12, 40)  # random cases where Triton is interpreted / elsewhere


def _differentiable(inputs: tuple) -> list[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _make(sample: Sample, dtype, device, seed: int, batch: int = 2, requires_grad=False):
    inputs = sample.make(dtype, device, torch.Generator().manual_seed(seed), batch)
    for t in _differentiable(inputs):
        t.requires_grad_(requires_grad)
    return inputs


def _grads(fn, inputs):
    outputs = fn(*inputs)
    leaves = [t for t in _differentiable(inputs) if t.requires_grad]
    return outputs, torch.autograd.grad(outputs.square().sum(), leaves)


def _sample_params(samples, backends=None):
    params = []
    for p in backends or backend_params():
        params += [pytest.param(*p.values, s, id=f"{p.id}-{s.name}", marks=p.marks)
                   for s in samples]
    return params


def _gradient_params(samples):
    """The backends that compute float64: cpu, cuda and Triton on CPU tensors
    (interpreted)."""
    return _sample_params(samples, [p for p in backend_params()
                                    if torch.float64 in dtypes_for(*p.values)])


def common_tests(spec: FamilySpec) -> dict:
    """The common test functions for ``spec``, by name."""

    @pytest.mark.parametrize(("device", "backend", "seed"), seeded_params(*spec.seeds))
    def test_random_cases_match_torch(device, backend, seed):
        case = spec.random_case(seed, interpreted(device, backend))
        dtypes = dtypes_for(device, backend)
        spec.run_case(device, backend, case, dtypes[seed % len(dtypes)], seed)

    @pytest.mark.parametrize(("device", "backend", "dtype"), dtype_params())
    @pytest.mark.parametrize("case", range(len(spec.dtype_cases)))
    def test_every_dtype(device, backend, dtype, case):
        spec.run_case(device, backend, spec.dtype_cases[case], dtype, 100)

    @pytest.mark.parametrize(("device", "backend", "sample"), _sample_params(spec.samples))
    def test_empty_batch(device, backend, sample):
        dtype = dtypes_for(device, backend)[0]
        inputs = _make(sample, dtype, device, 1, batch=0, requires_grad=True)
        with ck.use(backend=backend):
            output, grads = _grads(sample.ours, inputs)
        expected, expected_grads = _grads(sample.reference, inputs)
        assert output.shape == expected.shape
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            assert torch.equal(grad, expected_grad)

    @pytest.mark.parametrize(("device", "backend", "sample"), _sample_params(spec.samples))
    def test_backward_is_deterministic(device, backend, sample):
        inputs = _make(sample, dtypes_for(device, backend)[0], device, 2, requires_grad=True)
        with ck.use(backend=backend):
            first = _grads(sample.ours, inputs)[1]
            second = _grads(sample.ours, inputs)[1]
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)

    @pytest.mark.parametrize(("device", "backend"), backend_params())
    def test_opcheck(device, backend):
        """Schema, fake (meta) implementation, autograd registration and
        torch.compile/AOT handling of every operator."""
        for op, args in spec.op_calls(device, backend, dtypes_for(device, backend)[0]):
            torch.library.opcheck(op.custom_op, args)

    @pytest.mark.parametrize(("device", "backend", "sample"), _gradient_params(spec.samples))
    @pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck],
                             ids=lambda check: check.__name__)
    def test_derivatives_match_finite_differences(check, device, backend, sample):
        """Reverse and forward mode (gradcheck: backward and jvp;
        gradgradcheck: reverse over reverse and forward over reverse). The
        forward-mode formulas compose the same ops on every backend, so the
        interpreter, where each check takes tens of seconds, skips them."""
        inputs = _make(sample, torch.float64, device, 3, requires_grad=True)
        forward_mode = not interpreted(device, backend)
        modes = ({"check_forward_ad": forward_mode} if check is torch.autograd.gradcheck
                 else {"check_fwd_over_rev": forward_mode})
        with ck.use(backend=backend):
            assert check(sample.ours, inputs, fast_mode=interpreted(device, backend), **modes)

    @pytest.mark.parametrize(("device", "backend", "sample"), _gradient_params(spec.samples))
    def test_torch_func_transforms_match_torch(device, backend, sample):
        """torch.func.grad, jvp, vmap and dual tensors give torch's results
        (never a silent zero tangent)."""
        inputs = _make(sample, torch.float64, device, 7)
        tangents = _make(sample, torch.float64, device, 8)
        argnums = tuple(range(len(inputs)))
        with ck.use(backend=backend):
            grads = torch.func.grad(lambda *t: sample.ours(*t).square().sum(), argnums)(*inputs)
            output, tangent = torch.func.jvp(sample.ours, inputs, tangents)
            with forward_ad.dual_level():
                duals = [forward_ad.make_dual(x, t) for x, t in zip(inputs, tangents, strict=True)]
                dual_tangent = forward_ad.unpack_dual(sample.ours(*duals)).tangent
            stacked = [torch.stack([x, t]) for x, t in zip(inputs, tangents, strict=True)]
            batched = torch.func.vmap(sample.ours)(*stacked)
        expected_grads = torch.func.grad(lambda *t: sample.reference(*t).square().sum(),
                                         argnums)(*inputs)
        expected_batched = torch.stack([sample.reference(*inputs), sample.reference(*tangents)])
        assert_close(batched, expected_batched, torch.float64, sample.reduction, "vmap")
        expected, expected_tangent = torch.func.jvp(sample.reference, inputs, tangents)
        assert_close(output, expected, torch.float64, sample.reduction, "output")
        assert_close(tangent, expected_tangent, torch.float64, sample.reduction, "jvp")
        assert_close(dual_tangent, expected_tangent, torch.float64, sample.reduction, "dual")
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            assert_close(grad, expected_grad, torch.float64, 1000, "torch.func.grad")

    @pytest.mark.parametrize("sample", spec.samples, ids=lambda s: s.name)
    def test_torch_compile_fullgraph(sample):
        torch._dynamo.reset()
        inputs = _make(sample, torch.float32, "cpu", 5, requires_grad=True)
        with ck.use(backend="cpu"):
            eager, eager_grads = _grads(sample.ours, inputs)
            compiled, compiled_grads = _grads(torch.compile(sample.ours, fullgraph=True), inputs)
        torch.testing.assert_close(compiled, eager)
        for a, e in zip(compiled_grads, eager_grads, strict=True):
            torch.testing.assert_close(a, e)

    @pytest.mark.parametrize(("device", "backend", "sample"), _sample_params(
        spec.samples, [p for p in backend_params() if p.values[1] != "triton"]))
    def test_autocast_matches_torch(device, backend, sample):
        """As torch under autocast, forward and backward: float32 inputs, the
        result in torch's dtype (the autocast dtype for convolutions, the
        input's for pooling), float32 gradients of the float32 inputs."""
        inputs = _make(sample, torch.float32, device, 6, requires_grad=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            with ck.use(backend=backend):
                output = sample.ours(*inputs)
            expected = sample.reference(*inputs)
        assert output.dtype == expected.dtype
        # The float64 result of the inputs as the op sees them (rounded to its dtype).
        exact = sample.reference(*(t.detach().to(expected.dtype).double() for t in inputs))
        assert_close(output, exact.cpu(), expected.dtype, sample.reduction, "output")
        with ck.use(backend=backend):
            grads = torch.autograd.grad(output.float().square().sum(), inputs)
        expected_grads = torch.autograd.grad(expected.float().square().sum(), inputs)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            assert grad.dtype == expected_grad.dtype
            assert_close(grad, expected_grad.double().cpu(), expected.dtype, 1000, "gradient")

    @pytest.mark.parametrize(("call", "error", "message"),
                             [pytest.param(*case[1:], id=case[0]) for case in spec.bad_inputs])
    def test_bad_input_raises_before_any_kernel(call, error, message):
        with pytest.raises(error, match=re.escape(message)):
            call()

    return {test.__name__: test for test in (
        test_random_cases_match_torch, test_every_dtype, test_empty_batch,
        test_backward_is_deterministic, test_opcheck, test_derivatives_match_finite_differences,
        test_torch_func_transforms_match_torch,
        test_torch_compile_fullgraph, test_autocast_matches_torch,
        test_bad_input_raises_before_any_kernel)}

