"""Property-based fuzzing (hypothesis): random geometries (valid or not),
layouts, dtypes, NaN/inf values and empty batches for every op. The
property: torch and cnnkernels agree, either both return (the same values,
NaN and inf where torch has them, max pooling's indices exactly, and for
finite inputs the same gradients) or both raise. Seeded (derandomized) and
bounded for CI; ``-m slow`` runs a longer search on the cpu backend and
Triton's interpreter."""

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, interpreted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import tolerance

import cnnkernels as ck

# Quick (CI) and long (-m slow) searches; derandomized, so every run of CI
# tries the same cases.
QUICK = settings(max_examples=300, derandomize=True, deadline=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=5000, derandomize=True, deadline=None,
                suppress_health_check=list(HealthCheck))
INTERPRETED = settings(max_examples=40, derandomize=True, deadline=None,
                       suppress_health_check=list(HealthCheck))

SPECIAL_VALUES = (float("nan"), float("inf"), float("-inf"))


@st.composite
def tensors(draw, shape, dtype, specials: bool):
    """Random normal values of ``dtype`` (rounded as the op sees them), a few
    of them NaN or +-inf when ``specials``, in a random layout."""
    seed = draw(st.integers(0, 2**31 - 1))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if specials and t.numel():
        flat = t.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
    t = t.to(dtype)
    layout = draw(st.sampled_from(("contiguous", "channels_last", "noncontiguous")))
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous" and t.dim() == 4:
        wide = torch.empty((*t.shape[:3], 2 * t.shape[3]), dtype=dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _call(fn):
    """(result, None) or (None, the exception)."""
    try:
        return fn(), None
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        return None, error


def _assert_same(actual, expected, dtype, reduction, what):
    """Same shape; NaN, +inf and -inf at the same places; the rest within
    the dtype's tolerance (norm-wise, as reference.assert_close)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, what
    for special in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(special(actual), special(expected)), f"{what}: {special.__name__}"
    finite = torch.isfinite(expected)
    if finite.any():
        error = (actual[finite] - expected[finite]).abs().max().item()
        scale = max(expected[finite].abs().max().item(), 1e-30)
        assert error <= tolerance(dtype, reduction) * scale, f"{what}: error {error:.3e}"


def _check_agreement(ours, theirs, inputs, dtype, reduction, backend, differentiate):
    """The property, for one call: both raise, or both return the same;
    with ``differentiate``, the same gradients of a random grad_output."""
    with ck.use(backend=backend):
        actual, ours_error = _call(lambda: ours(*inputs))
    expected, torch_error = _call(lambda: theirs(*(t.double() if t.is_floating_point() else t
                                                   for t in inputs)))
    if torch_error is not None:
        assert ours_error is not None, f"torch raised {torch_error!r}, cnnkernels returned"
        return
    assert ours_error is None, f"cnnkernels raised {ours_error!r}, torch returned"
    outputs = actual if isinstance(actual, tuple) else (actual,)
    references = expected if isinstance(expected, tuple) else (expected,)
    for a, e in zip(outputs, references, strict=True):
        if e.is_floating_point():
            _assert_same(a, e, dtype, reduction, "output")
        else:
            assert torch.equal(a.cpu(), e), "indices"
    # A dilated max window with no tap inside the input yields -inf and an
    # index that is no element of it, torch's and ours alike; torch's
    # backward scatters there (even outside grad_input), ours passes nothing:
    # no gradient is compared (tests/test_hostile_inputs.py checks ours).
    if len(references) == 2 and bool(torch.isneginf(references[0]).any()):
        return
    if differentiate and outputs[0].numel():
        leaves = [t for t in inputs if t.is_floating_point()]
        grad = torch.randn(references[0].shape, dtype=torch.float64)
        with ck.use(backend=backend):
            leaves_ours = [t.detach().requires_grad_() for t in leaves]
            out = ours(*leaves_ours)
            out = out[0] if isinstance(out, tuple) else out
            grads = torch.autograd.grad(out, leaves_ours, grad.to(out.dtype))
        leaves_ref = [t.detach().double().requires_grad_() for t in leaves]
        ref = theirs(*leaves_ref)
        ref = ref[0] if isinstance(ref, tuple) else ref
        for g, e in zip(grads, torch.autograd.grad(ref, leaves_ref, grad), strict=True):
            _assert_same(g, e, dtype, 1000, "gradient")


DTYPES = {"cpu": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
          "triton": (torch.float64, torch.float32)}


@st.composite
def conv_cases(draw, backend):
    groups = draw(st.integers(1, 3))
    C, K = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES[backend]))
    specials = draw(st.booleans())
    x = draw(tensors((draw(st.integers(0, 2)), C, draw(st.integers(0, 7)),
                      draw(st.integers(1, 7))), dtype, specials))
    w = draw(tensors((K, C // groups, R, S), dtype, False))
    b = draw(st.one_of(st.none(), tensors((K,), dtype, False)))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(("same", "valid"))))
    stride = draw(st.sampled_from((1, 1, 2, 2, 3, 3, 2**62)))
    kwargs = dict(stride=1 if padding == "same" else stride, padding=padding,
                  dilation=draw(st.integers(1, 3)), groups=groups)
    activation = draw(st.sampled_from((None, "relu", "relu6", "silu")))
    act = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu}[activation]

    def ours(*t):
        return ck.conv2d(*t, **kwargs, activation=activation)

    def theirs(*t):
        return act(F.conv2d(*t, **kwargs))

    inputs = (x, w) if b is None else (x, w, b)
    return ours, theirs, inputs, dtype, C // groups * R * S, not specials


@st.composite
def pool_cases(draw, backend):
    kind = draw(st.sampled_from(("max", "avg", "adaptive_max", "adaptive_avg")))
    dtype = draw(st.sampled_from(DTYPES[backend]))
    specials = draw(st.booleans())
    x = draw(tensors((draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 8)),
                      draw(st.integers(1, 8))), dtype, specials))
    if kind.startswith("adaptive"):
        size = (draw(st.integers(0, 9)), draw(st.integers(1, 9)))
        functions = {"adaptive_max": (ck.adaptive_max_pool2d, F.adaptive_max_pool2d),
                     "adaptive_avg": (ck.adaptive_avg_pool2d, F.adaptive_avg_pool2d)}[kind]
        args, kwargs, window = (size,), {}, 9
    else:
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        kwargs = dict(stride=draw(st.one_of(st.none(), st.integers(1, 3))),
                      padding=draw(st.integers(0, 3)), ceil_mode=draw(st.booleans()))
        if kind == "max":
            kwargs["dilation"] = draw(st.integers(1, 3))
        else:
            kwargs["count_include_pad"] = draw(st.booleans())
            kwargs["divisor_override"] = draw(st.sampled_from((None, None, 3, -2)))
        functions = {"max": (ck.max_pool2d, F.max_pool2d), "avg": (ck.avg_pool2d, F.avg_pool2d)}
        functions = functions[kind]
        args, window = (kernel,), kernel[0] * kernel[1]
    if kind.endswith("max"):
        kwargs["return_indices"] = True
    ours_fn, theirs_fn = functions
    return (lambda t: ours_fn(t, *args, **kwargs), lambda t: theirs_fn(t, *args, **kwargs),
            (x,), dtype, window, not specials)


def _check(search, backend, cases):
    @search
    @given(case=cases(backend))
    def property_holds(case):
        ours, theirs, inputs, dtype, reduction, differentiate = case
        _check_agreement(ours, theirs, inputs, dtype, reduction, backend, differentiate)

    property_holds()


@pytest.mark.parametrize("cases", [conv_cases, pool_cases], ids=["conv2d", "pool2d"])
def test_fuzz_agrees_with_torch(cases):
    """The CI search, on the cpu backend."""
    _check(QUICK, "cpu", cases)


@pytest.mark.slow
@pytest.mark.parametrize(("device", "backend"),
                         [p for p in backend_params() if p.values[0] == "cpu"])
@pytest.mark.parametrize("cases", [conv_cases, pool_cases], ids=["conv2d", "pool2d"])
def test_fuzz_long(device, backend, cases):
    _check(INTERPRETED if interpreted(device, backend) else LONG, backend, cases)
