"""What keeps one definition of each thing honest: the codes Python uses are
_C's, every geometry has the same fields in Python and C++, every family in
the registry has its whole column, and importing the package stays cheap."""

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnkernels
from cnnkernels import _backend, _ext
from cnnkernels.ops import FAMILIES

ROOT = Path(__file__).resolve().parent.parent

needs_extension = pytest.mark.skipif(not _ext.has_cpu_kernels(),
                                     reason="cnnkernels._C is not built")


@needs_extension
def test_activation_codes_without_extension_are_cpps():
    from cnnkernels import _C

    codes = {name: int(member) for name, member in _C.Activation.__members__.items()}
    assert codes == _ext.ACTIVATION_CODES
    assert {a.name: int(a) for a in _ext.Activation} == _ext.ACTIVATION_CODES


@needs_extension
def test_dtype_codes_are_named_like_torch_dtypes():
    from cnnkernels import _C

    assert all(isinstance(getattr(torch, name), torch.dtype) for name in _C.DType.__members__)
    for (backend, _), dtypes in _backend.SUPPORTED_DTYPES.items():
        if backend != "triton":
            assert all(_ext.dtype_code(dtype) is not None for dtype in dtypes)


@needs_extension
def test_every_geometry_has_the_same_fields_in_python_and_cpp():
    """_C.struct_fields is what the bindings read, by name, from the Python
    geometry (pyext/<family>.cpp); each must be a dataclass of the same
    fields in the same order, in its family's op module."""
    from cnnkernels import _C

    modules = [importlib.import_module(f"cnnkernels.ops.{family.name}") for family in FAMILIES]
    assert _C.struct_fields
    for name, cpp_fields in _C.struct_fields.items():
        # Defined there (conv_transpose2d imports conv2d's).
        python = [getattr(m, name) for m in modules
                  if getattr(getattr(m, name, None), "__module__", None) == m.__name__]
        assert len(python) == 1, f"{name}: no Python dataclass in the family modules"
        assert tuple(f.name for f in dataclasses.fields(python[0])) == cpp_fields


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_registered_family_has_its_whole_column(family):
    assert set(family.public) <= set(cnnkernels.__all__)
    assert all(callable(getattr(cnnkernels, name)) for name in family.public)
    for module in family.triton_modules:
        assert callable(importlib.import_module(module).static_check_specs)
    bench = importlib.import_module(family.bench_module)
    for name in ("CASES", "ALGORITHMS", "make_inputs", "reference", "torch_impl", "ours_impl",
                 "prepare", "COLUMNS", "LEGEND", "VERIFY_CONFIGS", "VERIFY_TARGETS"):
        assert hasattr(bench, name), f"{family.bench_module} lacks {name}"
    native = (f"pyext/{family.name}.cpp", f"csrc/include/cnnk/{family.name}.h") \
        if family.native else ()
    for path in (f"cnnkernels/ops/{family.name}.py", f"tests/test_{family.name}.py",
                 f"benchmarks/bench_{family.name}.py", *native):
        assert (ROOT / path).exists(), path


def test_import_loads_neither_dynamo_nor_triton():
    """``import cnnkernels`` costs little on top of torch: no torch._dynamo,
    no Triton until a Triton kernel first runs."""
    code = ("import sys, cnnkernels\n"
            "print(sorted(m for m in ('torch._dynamo', 'triton', 'cnnkernels.kernels', "
            "'cnnkernels.bench') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.strip() == "[]"


@needs_extension
def test_an_op_skips_the_dispatcher_only_where_nothing_intercepts():
    """A plain call runs the op's implementation directly; a dispatch mode,
    the profiler and a backward still see the registered op by its name,
    with the same result."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    rows = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    with cnnkernels.use(backend="cpu"):
        plain = cnnkernels.triplet_margin_loss(*rows)
        with Seen() as mode:
            seen = cnnkernels.triplet_margin_loss(*rows)
        with torch.profiler.profile() as profile:
            profiled = cnnkernels.triplet_margin_loss(*rows)
    assert "cnnk.triplet_loss.default" in mode.ops
    assert "cnnk::triplet_loss" in {event.name for event in profile.events()}
    assert torch.equal(plain, seen) and torch.equal(plain, profiled)
    expected = torch.nn.functional.triplet_margin_loss(*rows)
    assert torch.allclose(plain, expected, rtol=1e-12, atol=0)
