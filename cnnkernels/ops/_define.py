"""One way to define an op family and its operators.

``Family`` is a family's entry in the registry (``cnnkernels.ops.FAMILIES``):
what the package's tools need to find the rest of its column without
importing it (the static check imports the Triton modules, the benchmark
driver the bench module, only when they run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One op family: its name (``--op NAME``), its public functions (exported
    as ``cnnkernels.<name>``), the Triton kernel modules (each with
    ``static_check_specs()``) and the benchmark module (``cnnkernels.bench``'s
    contract for a family)."""

    name: str
    public: tuple[str, ...]
    triton_modules: tuple[str, ...]
    bench_module: str
