"""Triton kernels, one module per op family (``cnnkernels.kernels.<family>``)
or, for a family with several algorithms, one per algorithm
(``cnnkernels.kernels.<family>.<algorithm>``); shared pieces in ``common``.

Each module exposes launchers that take torch tensors (already checked by
``cnnkernels.ops``) and ``static_check_specs()``: every kernel with every
launch configuration it can use, for ``benchmarks/static_check.py`` (which
finds the modules through the family registry, ``cnnkernels.ops.FAMILIES``).
"""

import triton
import triton.language as tl


@triton.jit
def _probe_kernel(ptr):
    tl.store(ptr, 0)


def interpreted() -> bool:
    """True when these kernels were defined under TRITON_INTERPRET=1, i.e. they
    run on CPU tensors in Triton's numpy interpreter. Triton decides this when
    a kernel is defined, so the flag is read off a kernel, not the environment."""
    return not isinstance(_probe_kernel, triton.runtime.JITFunction)


TORCH_TO_TRITON_POINTER = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32",
                           "float64": "*fp64"}


def compile_spec(name: str, fn, *, pointers: dict, constexprs: dict, num_warps: int,
                 num_stages: int = 3, maxnreg: int | None = None,
                 divisible: tuple[str, ...] = (), tensor_cores: bool = False) -> dict:
    """One static-check compilation: ``pointers`` maps each pointer argument
    to its Triton type ("*fp32", ...); every other non-constexpr argument is
    an i32 scalar. ``divisible`` names the arguments to compile as Triton
    specialises 16-divisible values at a launch (``attrs``); ``maxnreg``: the
    register cap the launch passes (None: the compiler's); ``tensor_cores``
    declares that this compilation must run its dots on tensor cores
    (fp16/bf16, or fp32 as TF32): the static check fails it when its SASS has
    no MMA instruction."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = pointers[arg]
        else:
            signature[arg] = "i32"
    attrs = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in divisible}
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs,
            "attrs": attrs,
            "num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg,
            "tensor_cores": tensor_cores}
