"""What the pytest-benchmark suites (benchmarks/bench_<family>.py) share:
the device, batch and dtype they run at, the cases (torch and every backend
that runs here), the timed call, and ``family_benchmark``, which makes a
suite's test from the family's bench module (``cnnkernels.bench.<family>``).

On CUDA the layers run at full size, batch 8, bfloat16, and the timed
function synchronizes so the time covers the kernels, not just their launch.
On the CPU they are shrunk as ``cnnkernels bench --quick`` shrinks them (H,
W <= 16), batch 1, float32, so a suite runs in seconds; with
TRITON_INTERPRET=1 the Triton backend adds one tiny smoke case. Timings
only: correctness is tests/ and ``cnnkernels bench`` (which also covers every
model's layers). Not collected by the default test run (pyproject.toml:
testpaths = ["tests"]).
"""

import contextlib
from types import ModuleType

import pytest
import torch

import cnnkernels
from cnnkernels import _backend
from cnnkernels.bench import driver

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
BATCH = 8 if CUDA else 1
DTYPE = torch.bfloat16 if CUDA else torch.float32
ROUNDS = 50 if CUDA else 5


def select(family: ModuleType, groups: list[str] | None, per_group: int) -> list:
    """The first ``per_group`` cases of each of ``groups`` (every group when
    None), chosen as ``cnnkernels bench --models`` chooses them, shrunk on
    the CPU as --quick shrinks them."""
    return driver.select_cases(family.CASES, groups, quick=not CUDA, per_group=per_group)


def params(family: ModuleType, cases, interpreter_smoke_case):
    """(impl, algorithm, case) params: torch, and every backend that runs here
    with each of the family's algorithms (None for a family without), plus
    the Triton interpreter on one tiny case (it is thousands of times slower)."""
    algorithms = list(family.ALGORITHMS) or [None]
    impls = [("torch", None)] + [(backend, algorithm)
                                 for backend in driver.default_backends(DEVICE)
                                 for algorithm in algorithms]
    for case in cases:
        for impl, algorithm in impls:
            label = impl if algorithm is None else f"{impl}-{algorithm}"
            yield pytest.param(impl, algorithm, case, id=f"{case.group}-{case.name}-{label}")
    if not CUDA and _backend.backend_problem("triton", DEVICE) is None:
        yield pytest.param("triton", None, driver.tiny_case(interpreter_smoke_case),
                           id="interpreter-smoke-triton")


def run(benchmark, family: ModuleType, impl: str, algorithm: str | None, case,
        direction: str) -> None:
    """Time ``family.prepare``'s function for torch or a cnnkernels backend
    (with ``algorithm``, skipped where the op rejects it), recording the
    case's flops (its bytes for a memory-bound op)."""
    inputs = family.make_inputs(case, BATCH, DTYPE, DEVICE, channels_last=False)
    flops, nbytes = case.work(BATCH, DTYPE, direction)
    work = {"bytes": nbytes} if flops is None else {"flops": flops}
    interpreted = impl == "triton" and not CUDA
    choice = family.ALGORITHMS[algorithm]() if algorithm else contextlib.nullcontext()
    with cnnkernels.use(backend=None if impl == "torch" else impl), choice:
        try:
            fn, _ = family.prepare(family.torch_impl if impl == "torch" else family.ours_impl,
                                   case, inputs, direction)
        except (ValueError, driver.Unsupported) as error:
            if algorithm is None and not isinstance(error, driver.Unsupported):
                raise
            pytest.skip(str(error))

        def timed():
            fn()
            if CUDA:
                torch.cuda.synchronize()

        benchmark.group = f"{case.group} {case.name} {case.describe()} {direction}"
        benchmark.extra_info.update(impl=impl, algorithm=algorithm, dtype=str(DTYPE),
                                    batch=BATCH, **work)
        benchmark.pedantic(timed, rounds=1 if interpreted else ROUNDS,
                           warmup_rounds=0 if interpreted else 1)


def family_benchmark(family: ModuleType, groups: list[str] | None = None, per_group: int = 1):
    """The test of a family's suite: the first ``per_group`` cases of each
    of ``groups`` (the interpreter's smoke case: the family's first), each
    implementation, forward and backward."""

    @pytest.mark.parametrize("direction", driver.DIRECTIONS)
    @pytest.mark.parametrize(("impl", "algorithm", "case"),
                             params(family, select(family, groups, per_group), family.CASES[0]))
    def test(benchmark, impl, algorithm, case, direction):
        run(benchmark, family, impl, algorithm, case, direction)

    return test
