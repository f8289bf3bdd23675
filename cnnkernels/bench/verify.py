"""The benchmark configurations gpu_verify.sh runs, read from the op families
(each family's bench module: ``VERIFY_CONFIGS`` and ``VERIFY_TARGETS``), so
that a new family needs no edit of the script."""

from __future__ import annotations

import importlib
from typing import NamedTuple

from cnnkernels.ops import FAMILIES


class VerifyConfig(NamedTuple):
    """One ``cnnkernels bench`` run of gpu_verify.sh: the label that names its
    table and log, its arguments besides --op and --budget, and its time
    budget in seconds (--budget: the run starts no new case after it)."""

    label: str
    args: tuple[str, ...]
    budget_s: float


def plan() -> list[str]:
    """Family by family, in the registry's order: ``targets TEXT`` where the
    family states targets for its results, then ``bench LABEL ARGS...`` for
    each configuration (ARGS: the bench command's, --op and --budget included)."""
    lines = []
    for family in FAMILIES:
        module = importlib.import_module(family.bench_module)
        if module.VERIFY_TARGETS:
            lines.append(f"targets {module.VERIFY_TARGETS}")
        for config in module.VERIFY_CONFIGS:
            lines.append(" ".join(("bench", config.label, "--op", family.name, *config.args,
                                   "--budget", f"{config.budget_s:g}")))
    return lines


def print_plan() -> None:
    """plan(), one line each: what gpu_verify.sh's benchmark loop reads."""
    print("\n".join(plan()))
