"""The benchmark driver's algorithm rows: every conv2d algorithm on each backend, a skipped
row (with the op's reason) where the op rejects the algorithm, the fused residual row, and
the summary's lines for them. Timings are not checked; results are, against float64 torch.
The detection rows of the padded, score-decaying and YOLO ops at their --quick sizes, and
their plain torch references against tests/test_detection.py's. Then the report's
formatting, the history's comparison, the layers traced from a model, the end-to-end
measurement and the autotune cache's concurrent writers."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import cnnkernels
from cnnkernels.bench import conv2d, detection, driver, history, layers, models, report, trace
from cnnkernels.bench.layers import ConvLayer, ConvTransposeLayer, PoolLayer
from cnnkernels.models import plain_torch_copy

TINY = ConvLayer("Tiny", "3x3", 3, 7, 6, 5, 3, 1, 1, 1, "relu")
TINY_RESIDUAL = ConvLayer("Tiny", "1x1+res", 4, 5, 7, 6, 1, 1, 0, 1, "relu", True)


def settings(backends, algorithms=None, directions=("forward",)):
    return driver.Settings(device=torch.device("cpu"), ops=["conv2d"], dtypes=[torch.float32],
                           batch=2, backends=list(backends), directions=list(directions),
                           layouts=["nchw"], quick=True, budget_s=None,
                           algorithms=algorithms)


def rows_of(case, run_settings):
    (table,) = [driver.Table("conv2d", conv2d, [case],
                             driver.select_algorithms(conv2d, run_settings.algorithms))]
    timer = driver.make_timer(run_settings.device, quick=True)
    return [row for direction in run_settings.directions
            for row in driver.case_rows(table, case, torch.float32, "nchw", direction,
                                        run_settings, timer, roofline=None)]


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
    assert "skipped conv2d cpu pointwise float32 nchw: 1 rows" in text


def test_fused_residual_row_against_torchs_chain():
    (row,) = rows_of(TINY_RESIDUAL, settings(["cpu"], algorithms=["direct"]))
    assert row["status"] == "ok", row["message"]
    assert row["errors"]["output"] <= 1e-5


def test_forward_plus_backward_speedup_in_the_summary():
    def row(direction, ours_ms, torch_ms):
        return {"op": "conv2d", "backend": "cpu", "algorithm": "direct", "dtype": "float32",
                "layout": "nchw", "tf32": False, "direction": direction, "status": "ok",
                "ours_ms": ours_ms, "torch_ms": torch_ms, "speedup": torch_ms / ours_ms,
                "flops": 1, "bytes": 1,
                "roofline_fraction": None}

    results = [driver.Result(TINY, row("forward", 1.0, 3.0)),
               driver.Result(TINY, row("backward", 3.0, 3.0))]
    text, ok = driver.summary(results, 0.0)
    assert ok
    assert ("geometric-mean speedup conv2d cpu direct float32 nchw forward+backward: "
            "1.50x (faster)") in text


def test_kink_window_covers_the_accumulations_rounding():
    """A float32 pre-activation 1e-6 from ReLU's kink, after 1728 products of
    magnitude 30, is within the accumulation's rounding (about 6e-4): its
    gradient is zeroed; one at 0.5 keeps its gradient. In float64 the window
    shrinks to a few 1e-12."""
    pre = torch.tensor([0.0, 1e-6, -2e-4, 0.5], dtype=torch.float64)
    magnitude = torch.full_like(pre, 30.0)
    inputs = {"gy": torch.ones(4, dtype=torch.float32)}
    layers.zero_grad_at_kinks(inputs, "relu", pre, magnitude, 1728)
    assert inputs["gy"].tolist() == [0.0, 0.0, 0.0, 1.0]
    inputs = {"gy": torch.ones(4, dtype=torch.float64)}
    layers.zero_grad_at_kinks(inputs, "relu", pre, magnitude, 1728)
    assert inputs["gy"].tolist() == [0.0, 1.0, 1.0, 1.0]
    inputs = {"gy": torch.ones(4, dtype=torch.float32)}
    layers.zero_grad_at_kinks(inputs, "silu", pre, magnitude, 1728)
    assert inputs["gy"].tolist() == [1.0] * 4


def test_relative_error_stops_at_the_dtypes_smallest_normal():
    """A float16 result that underflows to subnormals is as right as float16
    holds; the same absolute error on a float32 result is not."""
    reference = torch.tensor([3e-8, -1e-8], dtype=torch.float64)
    half = reference.to(torch.float16)
    assert driver.relative_error(half, reference) < 1e-3
    assert driver.relative_error(torch.tensor([6e-8, 0.0]), reference) > 0.5


def test_unknown_algorithm_is_refused_with_the_known_ones():
    with pytest.raises(driver.UsageError) as raised:
        driver.select_tables(["conv2d"], None, True, ["winograd"])
    assert "direct" in raised.value.message


# ---------------------------------------------------------------------------
# Detection rows

DECODING_KINDS = ["batched_nms_padded", "soft_nms", "matrix_nms", "yolo_detect"]
QUICK_DETECTION = driver.select_cases(detection.CASES, ["padded", "soft", "matrix", "yolo"],
                                      quick=True)


def test_quick_detection_selects_two_cases_of_each_kind():
    assert [case.kind for case in QUICK_DETECTION] == [k for k in DECODING_KINDS for _ in (0, 1)]
    names = [f"{case.group} {case.name}" for case in detection.CASES]
    assert max(map(len, names)) <= 21, names  # the compact table's case column shows them whole
    assert {case.method for case in QUICK_DETECTION if case.kind.endswith("soft_nms")} == {
        "linear", "gaussian"}
    (yolo, _) = (case for case in QUICK_DETECTION if case.kind == "yolo_detect")
    assert yolo.boxes == len(detection.YOLO_ANCHORS) * yolo.grid ** 2


def run_once(*fns):
    """A timer that runs each function once (the rows' plumbing, not their times)."""
    for fn in fns:
        fn()
    return [driver.Timing(1.0, 0.0) for _ in fns]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", QUICK_DETECTION, ids=lambda c: f"{c.kind}-{c.name}")
def test_detection_rows_match_their_references(case, dtype):
    """Each row at its --quick size, batch 2: ours exact (the selections,
    counts and classes) and within the tolerance (scores, boxes), the torch
    anchor run beside it, a memory figure for each side."""
    torch.manual_seed(0)
    run = replace(settings(["cpu"]), ops=["detection"], dtypes=[dtype])
    table = driver.Table("detection", detection, [case])
    layouts = ("nchw", "channels_last") if case.kind == "yolo_detect" else ("nchw",)
    for layout in layouts:
        (row,) = driver.case_rows(table, case, dtype, layout, "forward", run, run_once,
                                  roofline=None)
        assert row["status"] == "ok", row["message"]
        assert row["index_mismatches"] == 0 or case.kind == "matrix_nms"
        assert "message" not in row["torch_errors"], row["torch_errors"]
        assert row["torch_ms"] is not None and row["ours_ms"] is not None
        assert all(size > 0 for size in detection.case_of(row).memory())


def test_detection_references_agree_with_the_tests_plain_procedures():
    """The bench's vectorised references against test_detection's plain
    Python ones, float64, with tied scores: Soft-NMS, matrix NMS, the padded
    NMS and the YOLO decode."""
    from test_detection import (
        random_boxes,
        reference_matrix_nms,
        reference_padded,
        reference_soft_nms,
        reference_yolo,
    )

    generator = torch.Generator().manual_seed(59)
    boxes = random_boxes(40, generator)
    scores = (torch.randint(1, 16, (40,), generator=generator) / 16).double()
    classes = torch.randint(0, 3, (40,), generator=generator)
    for method in ("linear", "gaussian"):
        kept, kept_scores = detection.torch_soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
        expected, expected_scores = reference_soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
        assert kept.tolist() == expected
        torch.testing.assert_close(kept_scores, torch.tensor(expected_scores,
                                                             dtype=torch.float64))
        torch.testing.assert_close(detection.torch_matrix_nms(boxes, scores, classes, method, 2.0),
                                   reference_matrix_nms(boxes, scores, classes, method, 2.0))

    batch_boxes = random_boxes(30, generator, integer=True, batch=(2,))
    batch_scores = (torch.randint(0, 8, (2, 30, 4), generator=generator) / 8).double()
    count, out_boxes, out_scores, out_classes = detection.torch_padded_batch(
        batch_boxes, batch_scores, 0.2)
    expected = reference_padded(batch_boxes, batch_scores, detection.THRESHOLD, 0.2,
                                detection.MAX_DETECTIONS, detection.PRE_NMS_TOP_K)
    for b, detections in enumerate(expected):
        assert count[b].item() == len(detections)
        assert out_classes[b, :len(detections)].tolist() == [c for _, c in detections]
        assert torch.equal(out_boxes[b, :len(detections)],
                           batch_boxes[b, [n for n, _ in detections]])
        assert out_scores[b, :len(detections)].tolist() == [
            batch_scores[b, n, c].item() for n, c in detections]
        assert (out_classes[b, len(detections):] == -1).all()

    head = torch.randn(2, 3 * 7, 5, 5, generator=generator, dtype=torch.float64)
    anchors = torch.tensor([[10.0, 14.0], [23.0, 27.0], [37.0, 58.0]], dtype=torch.float64)
    for ours, theirs in zip(detection.torch_yolo_decode(head, anchors, 8.0),
                            reference_yolo(head.permute(0, 2, 3, 1), anchors, 8.0), strict=True):
        torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------------------
# Report formatting, history, layer derivation, end-to-end, autotune cache


def test_speedups_below_one_say_how_much_slower():
    assert report.speedup_text(0.15) == "0.15x (6.67x slower)"
    assert report.speedup_text(2.0) == "2.00x (faster)"
    assert report.speedup_short(0.5) == "2.00x slower"


def test_rates_and_times_in_adaptive_units():
    assert report.rate({"tflops": 0.000288}) == "288 MFLOP/s"
    assert report.rate({"tflops": 0.0456}) == "45.6 GFLOP/s"
    assert report.rate({"tflops": 12.34}) == "12.3 TFLOP/s"
    assert report.rate({"tflops": None, "gbps": 45.6}) == "45.6 GB/s"
    assert report.speedup_short(1234.5) == "1234x faster"
    assert report.duration(0.5) == "500 us"
    assert report.duration(4.567) == "4.57 ms"
    assert report.duration(2500) == "2.50 s"


def test_compact_table_fits_100_columns():
    row = {"group": "ResNet-50", "name": "layer3.3x3.s2", "backend": "triton",
           "algorithm": "implicit_gemm", "ours_ms": 123.456, "ours_spread": 0.123,
           "speedup": 0.0123, "tflops": 123.4, "roofline_fraction": 0.999, "status": "wrong",
           "errors": {"a": 0.31}, "index_mismatches": None}
    columns = report.compact_columns()
    for line in (report.table_header(columns), report.table_row(row, columns)):
        assert max(map(len, line.splitlines())) <= report.WIDTH, line


def _history_row(ms, spread, name="conv1"):
    return {"op": "conv2d", "group": "Tiny", "name": name, "shape": "s", "batch": 1,
            "dtype": "float32", "tf32": False, "layout": "nchw", "direction": "forward",
            "backend": "cpu", "algorithm": "direct", "status": "ok", "ours_ms": ms,
            "ours_spread": spread}


def test_history_flags_only_changes_beyond_the_spread(tmp_path):
    header = {"device": "Some CPU (R) 9000", "date": "then", "commit": "abc"}
    path = history.append(tmp_path, header, [_history_row(1.0, 0.02, "a"),
                                             _history_row(1.0, 0.02, "b"),
                                             _history_row(1.0, 0.02, "c")])
    assert path.name == "some-cpu-r-9000.jsonl"
    previous = history.last_run(tmp_path, header["device"])
    text, regressions = history.compare(previous, [
        _history_row(1.5, 0.02, "a"),   # slower, far beyond both spreads
        _history_row(1.5, 0.40, "b"),   # slower, but within its own (noisy) spread
        _history_row(0.5, 0.02, "c"),   # faster
        _history_row(9.0, 0.02, "new")])
    assert regressions == 1
    assert "REGRESSION" in text and "Tiny a" in text and "Tiny b" not in text
    assert "improved" in text and "3 rows matched" in text


def test_tiny_case_keeps_a_depthwise_layer_depthwise():
    depthwise = ConvLayer("M", "dw", 96, 56, 56, 96, 3, 2, 1, 96, "relu6")
    tiny = driver.tiny_case(depthwise)
    assert (tiny.in_channels, tiny.out_channels, tiny.groups, tiny.height) == (8, 8, 8, 8)


class SmallNet(torch.nn.Module):
    """Every traced kind: conv + batch norm + ReLU (twice, the second the same
    geometry: deduplicated), a strided conv followed by ReLU6, pools, a
    transposed conv and the global average."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.again = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.same = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.relu6 = torch.nn.ReLU6()
        self.pool = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.up = torch.nn.ConvTranspose2d(16, 4, 2, stride=2)
        self.avg = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = self.relu(self.bn2(self.again(x)))
        x = self.same(x)
        x = self.relu6(self.down(x))
        return self.avg(self.up(self.pool(x)))


def test_layers_traced_from_a_model_with_their_geometry():
    traced = trace.trace_layers(SmallNet, (3, 20, 20), "Small")
    assert traced.conv == [
        ConvLayer("Small", "stem", 3, 20, 20, 8, 3, 1, 1, 1, "relu"),
        ConvLayer("Small", "again", 8, 20, 20, 8, 3, 1, 1, 1, "relu"),
        ConvLayer("Small", "same", 8, 20, 20, 8, 3, 1, 1, 1, None),
        ConvLayer("Small", "down", 8, 20, 20, 16, 3, 2, 1, 8, "relu6")]
    assert traced.pool == [PoolLayer("Small", "pool", "max", 16, 10, 10, 3, 2, 1, True),
                           PoolLayer("Small", "avg", "global_avg", 4, 12, 12)]
    assert traced.conv_transpose == [ConvTransposeLayer("Small", "up", 16, 6, 6, 4, 2, 2)]
    # The traced geometry is the one torch runs: each case's output size is the
    # module's output size.
    net = SmallNet()
    down = net.down(torch.randn(1, 8, 20, 20))
    assert traced.conv[3].output_size() == tuple(down.shape[2:])
    pooled = net.pool(down)
    assert traced.pool[0].output_size() == tuple(pooled.shape[2:])
    assert traced.conv_transpose[0].output_size() == tuple(net.up(pooled).shape[2:])


class FusedNet(torch.nn.Module):
    """A model as cnnkernels.models builds them: cnnkernels.nn modules with
    fused activations."""

    def __init__(self):
        super().__init__()
        self.conv = cnnkernels.nn.Conv2d(3, 4, 3, padding=1, activation="relu")
        self.pool = cnnkernels.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)).flatten(1))


def test_plain_torch_copy_is_plain_torch_with_the_same_results():
    model = FusedNet().double()
    plain = plain_torch_copy(model)
    assert not any(type(m).__module__ == "cnnkernels.nn" for m in plain.modules())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = torch.nn.functional.max_pool2d(torch.nn.functional.relu(
        torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias, padding=1)), 2)
    expected = model.head(expected.flatten(1))
    torch.testing.assert_close(plain(x), expected)
    torch.testing.assert_close(model(x), expected)


def test_end_to_end_measures_both_variants_eager_and_compiled():
    rows = models.measure(FusedNet, (3, 8, 8), "Fused", torch.device("cpu"), batch=2,
                          executions=("eager", "compile"), steps=1, repeats=1, warmup=1,
                          compile_backend="eager")
    assert {(r.mode, r.execution, r.variant) for r in rows} == {
        (mode, execution, variant) for mode in ("train", "infer")
        for execution in ("eager", "compile") for variant in ("torch", "cnnkernels")}
    assert all(r.images_per_s and r.images_per_s > 0 for r in rows), rows
    assert len(models.pairs(rows)) == 4


_CACHE_WRITER = """
import hashlib, json, sys
from triton.runtime.cache import get_cache_manager
writer = int(sys.argv[1])
for shape in range(20):
    # every writer also writes the shapes all the others write (the same key),
    # hashed as Triton's autotuner hashes its keys
    for name, value in ((f"shape-{shape}", {"shape": shape}),
                        (f"shape-{shape}-{writer}", {"writer": writer})):
        get_cache_manager(hashlib.sha256(name.encode()).hexdigest()).put(
            json.dumps(value), "kernel.autotune.json", binary=False)
"""


def test_autotune_cache_loses_nothing_with_concurrent_writers(tmp_path, monkeypatch):
    """The on-disk cache common.autotune turns on (Triton's: a temporary
    directory, then os.replace): four processes writing the same 20 keys and
    20 keys of their own at once leave every file whole and readable."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    writers = [subprocess.Popen([sys.executable, "-c", _CACHE_WRITER, str(i)])
               for i in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    from triton.runtime.cache import get_cache_manager

    def read(name):
        manager = get_cache_manager(hashlib.sha256(name.encode()).hexdigest())
        return json.loads(Path(manager.get_file("kernel.autotune.json")).read_text())

    for shape in range(20):
        assert read(f"shape-{shape}") == {"shape": shape}
        for writer in range(4):
            assert read(f"shape-{shape}-{writer}") == {"writer": writer}
    assert not list(tmp_path.glob("*/tmp.pid_*")), "a temporary file was left behind"


def test_the_autotuned_kernels_cache_their_choices(monkeypatch):
    """kernels/common.autotune asks Triton to keep its tuning on disk (the
    interpreter, which never tunes, cannot show the cache itself)."""
    pytest.importorskip("triton")
    from cnnkernels.kernels import common

    calls = []
    monkeypatch.setattr(common.triton, "autotune", lambda **kwargs: calls.append(kwargs))
    common.autotune(["config"], key=["n"])
    assert calls == [{"configs": ["config"], "key": ["n"], "cache_results": True}]
