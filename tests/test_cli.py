"""The ``cnnkernels`` command: help and version without torch, one-line
errors for requests the machine cannot satisfy, a bench run's outputs and
history across two runs, verify's exit status on a broken kernel, tune on a
CPU. The runs are tiny (--quick, one family, few models)."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from cnnkernels import cli
from cnnkernels.bench import gram, report


def _run_cli(*args: str, trace_imports: bool = True) -> tuple[subprocess.CompletedProcess, set]:
    """``python -m cnnkernels ARGS`` (what the ``cnnkernels`` script runs) in
    a fresh interpreter, and the top-level modules it imported (from
    ``-X importtime``, which lists every import on stderr)."""
    trace = ["-X", "importtime"] if trace_imports else []
    result = subprocess.run([sys.executable, *trace, "-m", "cnnkernels", *args],
                            capture_output=True, text=True, timeout=300)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, imported


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["bench", "--help"],
                                  ["verify", "--help"], ["tune", "--help"]])
def test_help_and_version_import_neither_torch_nor_triton(args):
    result, imported = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "cnnkernels" in imported and not imported & {"torch", "triton"}
    assert "``" not in result.stdout  # plain text, no reStructuredText
    if args == ["--version"]:
        assert result.stdout.startswith("cnnkernels 0.1.0")


def test_a_library_import_defines_the_operators():
    """Code that only calls torch.ops.cnnk.* (a loaded torch.export program,
    say) needs nothing but ``import cnnkernels``."""
    result = subprocess.run([sys.executable, "-c", "import cnnkernels, torch; "
                             "print(torch.ops.cnnk.conv2d.default.name())"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cnnk::conv2d"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error():
    result, _ = _run_cli("bench", "--quick", "--device", "cuda", trace_imports=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--device cuda" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_triton_backend_without_a_gpu_is_refused_with_the_reason(capsys):
    assert cli.main(["bench", "--quick", "--backend", "triton", "--no-history"]) == 2
    error = capsys.readouterr().err
    assert "--backend triton" in error and "interpreter" in error and "never timed" in error


@pytest.mark.parametrize("args", [["--ops", "convolution"], ["--dtype", "float8"],
                                  ["--layout", "nhwc"], ["--models", "nosuchnet"]])
def test_bad_selections_name_the_option(capsys, args):
    assert cli.main(["bench", "--quick", "--no-history", *args]) == 2
    error = capsys.readouterr().err
    assert args[0] in error and "Traceback" not in error


def _bench(tmp_path, capsys, *extra):
    status = cli.main(["bench", "--quick", "--ops", "gram", "detection", "--models", "vgg", "nms",
                       "--direction", "forward",
                       "--results-dir", str(tmp_path / "results"), *extra])
    return status, capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run")
def test_two_runs_history_compare_and_every_output(tmp_path, capsys):
    status, first = _bench(tmp_path, capsys)
    assert status == 0, first
    table = [line for line in first.splitlines() if not line.startswith("recorded in ")]
    assert all(len(line) <= report.WIDTH for line in table), max(table, key=len)
    assert "CPU threads" in first
    if importlib.util.find_spec("triton") is not None:  # installed, never timed without a GPU
        assert "not run: triton" in first
    assert "roof%" in first and "GFLOP/s" in first
    outputs = {"json": tmp_path / "run.json", "csv": tmp_path / "run.csv",
               "markdown": tmp_path / "run.md"}
    status, second = _bench(tmp_path, capsys, "--compare", "--plots", str(tmp_path / "plots"),
                            *(arg for kind, path in outputs.items()
                              for arg in (f"--{kind}", str(path))))
    assert status == 0, second
    assert "against the run of" in second and "rows matched the previous run" in second
    (history_file,) = (tmp_path / "results").glob("*.jsonl")
    runs = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert len(runs) == 2 and all(run["rows"] for run in runs)
    rows = json.loads(outputs["json"].read_text())["rows"]
    assert {row["op"] for row in rows} == {"gram", "detection"}
    assert all(r["status"] == "ok" for r in rows)
    assert outputs["csv"].read_text().count("\n") == len(rows) + 1
    assert "## Summary" in outputs["markdown"].read_text()
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "speedup_per_layer.png", "roofline_fraction.png", "nms_time.png"}


def test_verify_quick_passes_on_the_whole_library():
    """The README's check, as a user runs it: every family, backend,
    algorithm, dtype and layout of ``verify --quick`` in a fresh process
    (its seed fixes every case's data), exit 0."""
    run = subprocess.run([sys.executable, "-m", "cnnkernels", "verify", "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "verify: PASS" in run.stdout


def test_verify_passes_and_fails_on_a_broken_kernel(monkeypatch, capsys):
    args = ["verify", "--quick", "--ops", "gram", "--backend", "cpu", "--dtype", "float32"]
    assert cli.main(args) == 0
    assert "verify: PASS" in capsys.readouterr().out

    real = gram.ours_impl
    monkeypatch.setattr(gram, "ours_impl", lambda case, x: real(case, x) * 1.01)
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "verify: FAIL" in out and "WRONG" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer")
def test_tune_on_a_cpu_has_nothing_to_tune(capsys):
    assert cli.main(["tune"]) == 0
    assert "nothing to tune" in capsys.readouterr().out
