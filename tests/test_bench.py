"""The benchmark driver's algorithm rows: every conv2d algorithm on each backend, a skipped
row (with the op's reason) where the op rejects the algorithm, the fused residual row, and
the summary's lines for them. Timings are not checked; results are, against float64 torch."""

import pytest
import torch

from cnnkernels.bench import conv2d, driver
from cnnkernels.bench.layers import ConvLayer

TINY = ConvLayer("Tiny", "3x3", 3, 7, 6, 5, 3, 1, 1, 1, "relu")
TINY_RESIDUAL = ConvLayer("Tiny", "1x1+res", 4, 5, 7, 6, 1, 1, 0, 1, "relu", True)


def settings(backends, algorithms=None, directions=("forward",)):
    return driver.Settings(device=torch.device("cpu"), ops=["conv2d"], dtypes=[torch.float32],
                           batch=2, backends=list(backends), directions=list(directions),
                           channels_last=False, quick=True, budget_s=None,
                           algorithms=algorithms)


def rows_of(case, run_settings):
    (table,) = [driver.Table("conv2d", conv2d, [case],
                             driver.select_algorithms(conv2d, run_settings.algorithms))]
    timer = driver.make_timer(run_settings.device, quick=True)
    return [row for direction in run_settings.directions
            for row in driver.case_rows(table, case, torch.float32, direction, run_settings,
                                        timer, roofline=None)]


def test_every_algorithm_runs_on_the_cpu_backend():
    """Every algorithm that takes the (3x3, dense) case runs; pointwise,
    which takes only 1x1 ones, and depthwise, which takes only one input
    channel per group, are skipped rows."""
    rows = rows_of(TINY, settings(["cpu"], directions=driver.DIRECTIONS))
    assert [(row["algorithm"], row["direction"]) for row in rows] == [
        (name, direction) for direction in driver.DIRECTIONS for name in conv2d.ALGORITHMS]
    for row in rows:
        if row["algorithm"] in ("pointwise", "depthwise"):
            assert row["status"] == "skipped"
            continue
        assert row["status"] == "ok", row["message"]
        assert all(error <= 1e-5 for error in row["errors"].values()), row["errors"]


def test_an_algorithm_the_case_does_not_fit_is_a_skipped_row_with_the_ops_reason():
    rows = rows_of(TINY, settings(["cpu"], algorithms=["pointwise"]))
    (row,) = rows
    assert row["status"] == "skipped"
    assert "'pointwise' takes 1x1 convolutions" in row["message"]
    text, ok = driver.summary([driver.Result(TINY, row)], 0.0)
    assert ok
    assert "skipped conv2d cpu pointwise float32: 1 rows" in text


def test_fused_residual_row_against_torchs_chain():
    (row,) = rows_of(TINY_RESIDUAL, settings(["cpu"], algorithms=["direct"]))
    assert row["status"] == "ok", row["message"]
    assert row["errors"]["output"] <= 1e-5


def test_forward_plus_backward_speedup_in_the_summary():
    def row(direction, ours_ms, torch_ms):
        return {"op": "conv2d", "backend": "cpu", "algorithm": "direct", "dtype": "float32",
                "tf32": False, "direction": direction, "status": "ok", "ours_ms": ours_ms,
                "torch_ms": torch_ms, "speedup": torch_ms / ours_ms, "flops": 1, "bytes": 1,
                "roofline_fraction": None}

    results = [driver.Result(TINY, row("forward", 1.0, 3.0)),
               driver.Result(TINY, row("backward", 3.0, 3.0))]
    text, ok = driver.summary(results, 0.0)
    assert ok
    assert "geometric-mean speedup conv2d cpu direct float32 forward+backward: 1.50x" in text


def test_unknown_algorithm_is_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="direct"):
        driver.select_tables(["conv2d"], None, True, ["winograd"])
