"""One way to define an op family and its operators.

An operator is one *plan* function, decorated with ``define_op``:

    @define_op("cnnk::avg_pool2d", returns=Tensor)
    def avg_pool2d_op(input: Tensor, ..., backend: str) -> Launch:
        g = geometry(...)                       # validates; raises before any kernel
        output = allocate(...)                  # uninitialised
        return Launch(output, {"input": input, "output": output},
                      lambda backend: kernels(backend, g, input, output), g.index_extent())

The plan validates its arguments, allocates the outputs (shape, dtype and
memory format) and says which kernels would run; it never touches data.
``define_op`` makes a ``torch.library.custom_op`` of it whose real
implementation is plan -> check the backend can run the tensors (device,
dtype, and on the 32-bit backends every offset and the geometry's index
arithmetic; ``auto`` resolved for their device) -> poison the
outputs (tests only) -> launch, unless every output is empty; and whose fake
(meta) implementation is the plan's outputs. Real and fake thus validate
alike and agree on every output. The public functions call an op through
its ``Operator``, which runs the real implementation at once, skipping
torch's dispatcher (some 30 us a call on the cpu), when nothing would
intercept the call (``plain_call``: plain tensors, no torch function or
dispatch mode, torch.func transform, JIT tracer or profiler); everything
else goes through ``torch.ops.cnnk.*``. Every op has a ``backend: str`` argument
("auto" or a concrete backend). ``define_op`` returns an ``Operator``, whose
``register_derivatives`` gives the op its reverse and forward modes (below).
With ``autocast=True`` the op also takes part
in CPU and CUDA autocast as torch's lower-precision ops do (``conv2d``):
floating-point tensors other than float64 are cast to the autocast dtype
first. Ops without it run in their inputs' dtype under autocast, like
torch's pooling.

``Family`` is a family's entry in the registry (``cnnkernels.ops.FAMILIES``):
what the package's tools need to find the rest of its column without
importing it (the static check imports the Triton modules, the benchmark
driver the bench module, only when they run).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch.autograd import forward_ad

from cnnkernels import _args, _backend


@dataclass(frozen=True)
class Family:
    """One op family: its name (``--op NAME``), its public functions (exported
    as ``cnnkernels.<name>``), the Triton kernel modules (each with
    ``static_check_specs()``) and the benchmark module (``cnnkernels.bench``'s
    contract for a family); ``native``: it has C++/CUDA launchers of its own
    (bindings and header), False for a family that runs another family's
    launchers (conv_transpose2d: conv2d's)."""

    name: str
    public: tuple[str, ...]
    triton_modules: tuple[str, ...]
    bench_module: str
    native: bool = True


@dataclass(slots=True)
class Launch:
    """What a plan returns: the allocated outputs (one tensor or a tuple, as
    the op returns them); every tensor the kernels read or write, by name
    (None for an absent optional one; the first sets the device and dtype the
    backend must handle); ``run(backend)``, which launches the kernels on the
    concrete backend; ``index_extent``, the largest value the kernels' index
    arithmetic reaches (the geometry's ``index_extent()``, checked against the
    32-bit backends' limit); and ``empty_sum``: the outputs are sums over an
    empty range (no sample, no window), so they are zeroed instead.
    An op whose result's size depends on the data (nms) returns
    ``result()`` after the kernels instead of the outputs, and
    ``fake_result()`` (sizes from ``torch.library.get_ctx()``) as its fake."""

    outputs: torch.Tensor | tuple[torch.Tensor, ...]
    tensors: dict
    run: Callable[[str], None]
    index_extent: int
    empty_sum: bool = False
    result: Callable[[], torch.Tensor] | None = None
    fake_result: Callable[[], torch.Tensor] | None = None


def define_op(qualname: str, *, returns, autocast: bool = False):
    """Decorator: the custom op ``qualname`` ("cnnk::name") from a plan
    function, whose annotated parameters are the op's schema and which
    returns a ``Launch``; ``returns`` is the op's return annotation."""

    def decorate(plan: Callable[..., Launch]):
        signature = inspect.signature(plan, eval_str=True)
        name = qualname.split("::")[1]

        def implementation(*args):
            launch = plan(*args)
            backend = _backend.runnable(args[-1], name, launch.tensors, launch.index_extent)
            outputs = launch.outputs if isinstance(launch.outputs, tuple) else (launch.outputs,)
            _args.poison(*outputs)
            if any(t.numel() for t in outputs):
                if launch.empty_sum:
                    for t in outputs:
                        t.zero_()
                else:
                    launch.run(backend)
            return launch.result() if launch.result else launch.outputs

        if list(signature.parameters)[-1] != "backend":
            raise TypeError(f"{qualname}: the last parameter of an op must be `backend: str`")
        implementation.__signature__ = signature.replace(return_annotation=returns)
        implementation.__name__ = plan.__name__
        implementation.__doc__ = plan.__doc__
        op = torch.library.custom_op(qualname, implementation, mutates_args=(),
                                     device_types=("cpu", "cuda"))
        op.register_fake(_fake(plan))
        if autocast:
            _register_autocast(op, name)
        tensor_positions = tuple(
            i for i, parameter in enumerate(signature.parameters.values())
            if parameter.annotation in (torch.Tensor, Optional[torch.Tensor]))
        return Operator(op, name, autocast, implementation, tensor_positions)

    return decorate


def _fake(plan: Callable[..., Launch]):
    def fake(*args):
        launch = plan(*args)
        return launch.fake_result() if launch.fake_result else launch.outputs

    return fake


# The Autograd and Autocast kernels of the ops.
_LIBRARY = torch.library.Library("cnnk", "FRAGMENT")


class Operator:
    """A defined op: ``custom_op`` is what ``torch.ops.cnnk.<name>`` calls
    (for ``torch.library.opcheck``, export, direct calls); the public
    functions and the derivative formulas call the Operator.

    ``register_derivatives(setup_context, backward, jvp)`` gives the op its
    reverse and forward modes through an ``autograd.Function`` (torch's
    custom ops have no jvp: register_autograd's Function ignored dual
    tensors, a silent zero tangent, and torch.func refuses it). The Function
    is the op's Autograd kernel, so a direct call gets both modes too, and
    ``generate_vmap_rule`` lets torch.func batch it. The torch.func
    transforms (grad, vjp, jvp, vmap, jacrev, jacfwd, hessian) need the
    Function applied above the dispatcher: calling the Operator does that
    (a direct call of the custom op under a transform raises, clearly).
    Under ``torch.compile``, whose tracer refuses a custom jvp, the Operator
    calls the custom op directly (reverse mode as usual; forward mode raises).
    An autocast op casts before applying the Function, so it saves what it
    computes with. ``setup_context`` saves tensors with ``save(ctx, ...)``,
    which both modes can read."""

    def __init__(self, custom_op, name: str, autocast: bool, implementation: Callable,
                 tensor_positions: tuple[int, ...]):
        self.custom_op = custom_op
        self.name = name
        self._autocast = autocast
        self._implementation = implementation
        self._tensor_positions = tensor_positions  # the Tensor / Optional[Tensor] parameters
        self._derivatives = None

    def __call__(self, *args):
        if self._derivatives is None or torch.compiler.is_compiling():
            return self.custom_op(*args)
        if self._autocast:
            device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
            if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
                dtype = torch.get_autocast_dtype(device_type)
                with torch.autocast(device_type, enabled=False):
                    return self(*(_cast(a, device_type, dtype) for a in args))
        if _differentiated(args):
            return self._apply_derivatives(args)
        if plain_call(args):
            return self._implementation(*args)
        return self.custom_op(*args)

    def _apply_derivatives(self, args):
        """The derivatives Function applied to ``args``. Outside the torch.func
        transforms, ``Function.apply`` only rebinds the arguments to forward's
        signature (they are positional, without defaults: a no-op costing some
        15 us a call) and unwraps dead functorch wrappers before the C++ apply;
        here the C++ apply is called after the unwrapping alone."""
        if torch._C._are_functorch_transforms_active():
            return self._derivatives.apply(*_leaves(args))
        args = list(args)
        for i in self._tensor_positions:
            if args[i] is not None:
                args[i] = _unwrap_if_dead(args[i])
        return self._apply_below_transforms(*args)

    def register_derivatives(self, *, setup_context, backward, jvp) -> None:
        operator = getattr(torch.ops.cnnk, self.name).default
        implementation = self._implementation

        def forward(*args):
            # Below autograd: the Function records the derivatives.
            values = _values(args)
            if plain_call(values):
                return implementation(*values)
            with torch._C._AutoDispatchBelowAutograd():
                return operator(*values)

        # Function.apply binds its arguments to forward's signature on every
        # call; a precomputed one spares inspect.signature's parse (~8 us).
        forward.__signature__ = inspect.signature(forward)

        def setup(ctx, inputs, output):
            setup_context(ctx, _values(inputs), output)

        self._derivatives = derivatives = type(
            f"{self.name}_derivatives", (torch.autograd.Function,), {
                "forward": staticmethod(forward),
                "setup_context": staticmethod(setup),
                "backward": staticmethod(backward),
                "jvp": staticmethod(jvp),
                "generate_vmap_rule": True,
            })
        self._apply_below_transforms = _FUNCTION_APPLY.__get__(None, derivatives)

        def autograd_kernel(keyset, *args):
            if _differentiated(args):
                if torch._C._functorch.maybe_current_level() is not None:
                    raise RuntimeError(
                        f"torch.ops.cnnk.{self.name} called directly under a torch.func "
                        f"transform: call the public cnnkernels function (or the Operator "
                        f"cnnkernels.ops) instead, which supports the transforms")
                return self._apply_derivatives(args)
            with torch._C._AutoDispatchBelowAutograd():
                return operator.redispatch(keyset & torch._C._after_autograd_keyset, *args)

        # It replaces the kernel custom_op put there (which only raises "no
        # autograd formula"); torch warns of that override.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "(?s).*Overriding a previously registered kernel")
            _LIBRARY.impl(self.name, autograd_kernel, "Autograd", with_keyset=True)


# torch.autograd.Function.apply's C++ part (what its Python apply ends in).
_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


class _Leaf:
    """A list argument (stride, padding, ...) kept whole: torch.func's
    pytrees would flatten it into leaves its vmap rules do not expect."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _leaves(args) -> tuple:
    return tuple(_Leaf(a) if isinstance(a, list | tuple) else a for a in args)


def _values(args) -> tuple:
    if _Leaf not in map(type, args):
        return args
    return tuple(a.value if type(a) is _Leaf else a for a in args)


def plain_call(args) -> bool:
    """Whether a call may skip torch's dispatcher and run the op's
    implementation at once, as the dispatcher would: plain (or Parameter)
    tensors on the cpu or a GPU, and nothing that intercepts ops (a torch
    function or dispatch mode: fake tensors, make_fx, a TorchDispatchMode
    counting calls; a torch.func transform; the JIT tracer; the profiler,
    which should see the op by its name). The dispatcher costs some 30 us a
    call on the cpu, as much as a small op's kernel."""
    if (torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack()
            or torch._C._functorch.maybe_current_level() is not None
            or torch._C._get_tracing_state() is not None
            or torch.autograd._profiler_enabled()):
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSOR_TYPES
                                            or not (a.is_cpu or a.is_cuda)):
            return False
    return True


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def save(ctx, *tensors) -> None:
    """Save tensors (or None) for the backward and for the jvp alike (the
    jvp runs in the forward's call, only under forward mode: a dual level
    open or a torch.func transform)."""
    ctx.save_for_backward(*tensors)
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        ctx.save_for_forward(*tensors)


def _differentiated(args) -> bool:
    """An input requires grad, or forward-mode AD is on (a dual level open)."""
    if forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled():
        return True
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return True
    return False


def derivatives_needed(args) -> bool:
    """Whether an Operator called with ``args`` records derivatives (what a
    public function checks to ask an op for what its derivatives read):
    ``_differentiated``, and under torch.compile reverse mode only."""
    if torch.compiler.is_compiling():
        return torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    return _differentiated(args)


def reverse_mode_only(args) -> bool:
    """Whether an Operator called with ``args`` records a backward and
    nothing else: grad mode on and an input requiring grad, no dual level
    open (forward mode), not compiling, and a plain call (``plain_call``:
    no transform or mode). An op may then compute its backward's work ahead,
    in the forward's pass over the data (the triplet loss on the cpu)."""
    return (forward_ad._current_level < 0 and not torch.compiler.is_compiling()
            and _differentiated(args) and plain_call(args))


def incoming_scalar(grad) -> float | None:
    """The value of a backward's incoming gradient when reading it costs
    nothing and records nothing: a 0-d plain cpu tensor (no device sync, no
    trace or transform: ``plain_call``) while no graph is recorded. Else
    None. A backward may then fold it into a kernel's scale or skip work it
    makes unnecessary (a gradient of 1)."""
    if (grad is None or grad.dim() != 0 or not grad.is_cpu or torch.is_grad_enabled()
            or not plain_call((grad,))):
        return None
    return grad.item()


def _register_autocast(op, name: str) -> None:
    """Under autocast, cast floating-point tensors (not float64) on the
    autocast device to its current dtype and run the op with autocast off:
    torch's rule for its lower-precision ops, with the dtype read when the op
    runs (``torch.library.register_autocast`` fixes one dtype)."""
    for device_type, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        def autocast_kernel(_keyset, *args, device_type=device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return op(*(_cast(a, device_type, dtype) for a in args))

        _LIBRARY.impl(name, autocast_kernel, key, with_keyset=True)


def _cast(value, device_type: str, dtype: torch.dtype):
    if (isinstance(value, torch.Tensor) and value.is_floating_point()
            and value.dtype != torch.float64 and value.device.type == device_type):
        return value.to(dtype)
    return value
