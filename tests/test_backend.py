"""Backend selection: cnnkernels.use, CNNK_BACKEND, cnnkernels.info, and the
errors for backends that cannot run."""

import os
import re
import subprocess
import sys

import pytest
import torch

import cnnkernels as ck
from cnnkernels import _backend, _ext


def test_use_as_context_manager_restores_previous_choice():
    assert _backend.current_backend() == "auto"
    with ck.use(backend="cpu", conv_algorithm="direct"):
        assert _backend.current_backend() == "cpu"
        assert _backend.current_conv_algorithm() == "direct"
        with ck.use(backend="triton"):
            assert _backend.current_backend() == "triton"
            assert _backend.current_conv_algorithm() == "direct"
        assert _backend.current_backend() == "cpu"
    assert _backend.current_backend() == "auto"
    assert _backend.current_conv_algorithm() == "auto"


def test_use_as_statement_sets_globally():
    ck.use(backend="cpu")
    assert _backend.current_backend() == "cpu"
    ck.use(backend="auto")
    assert _backend.current_backend() == "auto"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(backend="gpu"), "backend must be one of 'auto', 'cpu', 'cuda', 'triton', got 'gpu'"),
    (dict(conv_algorithm="fft"),
     "conv_algorithm must be one of 'auto', 'direct', 'implicit_gemm', 'pointwise', 'im2col', "
     "'depthwise', got 'fft'"),
])
def test_use_rejects_unknown_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ck.use(**kwargs)
    assert _backend.current_backend() == "auto"


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("CNNK_BACKEND",)}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=300)


def test_environment_variable_sets_initial_backend():
    result = _run_python("import cnnkernels._backend as b; print(b.current_backend())",
                         CNNK_BACKEND="cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"


def test_bad_environment_variable_names_itself():
    """Read when the API loads: on the first use of a public name."""
    result = _run_python("import cnnkernels; cnnkernels.conv2d", CNNK_BACKEND="tpu")
    assert result.returncode != 0
    assert "CNNK_BACKEND must be one of" in result.stderr


def test_auto_picks_the_cpu_kernels_for_cpu_tensors():
    assert _backend.resolve_backend(torch.device("cpu"), "auto") == "cpu"


def test_triton_on_cpu_without_interpreter_says_how_to_enable_it():
    code = ("import torch, cnnkernels as ck\n"
            "with ck.use(backend='triton'):\n"
            "    ck.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))\n")
    result = _run_python(code, TRITON_INTERPRET="0")
    assert result.returncode != 0
    assert "set TRITON_INTERPRET=1" in result.stderr


def test_missing_extension_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_IMPORT_ERROR", ImportError("No module named 'cnnkernels._C'"))
    with pytest.raises(RuntimeError, match=re.escape("pip install -e .")):
        _ext.cpu_kernels()
    not_built = re.escape("cnnkernels._C is not built")
    with ck.use(backend="cpu"), pytest.raises(RuntimeError, match=not_built):
        ck.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))
    assert ck.info()["extension_built"] is False


def test_info_reports_build_and_environment():
    info = ck.info()
    for key in ("torch", "extension_built", "cuda_kernels_built", "cuda_archs", "triton",
                "triton_interpreter", "cupy", "cuda_available", "device", "backend"):
        assert key in info
    assert info["extension_built"] is _ext.has_cpu_kernels()
    if info["cuda_kernels_built"]:
        assert "80" in info["cuda_archs"] and "90a" in info["cuda_archs"]
