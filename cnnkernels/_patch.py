"""``cnnkernels.patch(model)``: run an existing torch model on cnnkernels'
layers, in place; ``cnnkernels.unpatch(model)`` undoes it.

Why a class switch: each cnnkernels layer is a subclass of its torch.nn
module with no state of its own, so setting ``module.__class__`` keeps the
very parameter and buffer tensors (an optimizer built before keeps
working), hooks, state-dict keys and the module tree, and undoing it is
setting the class back. Why fusion replaces ``forward`` of the containers
(an instance attribute, a ``functools.partial``: it deep-copies, pickles and
compiles) rather than the modules it fuses: the norm and activation modules
stay untouched, so one shared by several places (torchvision's ResNet
blocks reuse one ReLU) still works everywhere, the state dict keeps its
keys, and in training mode the fused forward runs the original modules.
This module is separate from cnnkernels.nn because it depends on it (and
keeps nn a plain module library).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from cnnkernels import nn
from cnnkernels._backend import BACKENDS, check_choice

__all__ = ["PatchReport", "patch", "unpatch"]

# torch.nn module -> its cnnkernels twin (exact classes: a subclass of a
# torch module may compute something else in its forward).
_TWINS = {torch.nn.Conv2d: nn.Conv2d, torch.nn.ConvTranspose2d: nn.ConvTranspose2d,
          torch.nn.MaxPool2d: nn.MaxPool2d, torch.nn.AvgPool2d: nn.AvgPool2d,
          torch.nn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
          torch.nn.AdaptiveMaxPool2d: nn.AdaptiveMaxPool2d}
_OURS = tuple(_TWINS.values())
_COMPUTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# What patch changed on a module, to be undone by unpatch: the class it
# had and the instance attributes it set.
_RESTORE = "_cnnkernels_restore"
_ABSENT = object()
REPORT = "cnnkernels_report"


@dataclass
class PatchReport:
    """What ``cnnkernels.patch`` did: ``replaced`` (name, torch class) of
    the layers now on cnnkernels, ``fused`` (name, what was fused) and
    ``left_alone`` (name, class, why) of the layers torch still runs.
    ``print(report)`` summarises it."""

    backend: str | None
    fuse: bool
    replaced: list[tuple[str, str]] = field(default_factory=list)
    fused: list[tuple[str, str]] = field(default_factory=list)
    left_alone: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        counts: dict[str, int] = {}
        for _, kind in self.replaced:
            counts[kind] = counts.get(kind, 0) + 1
        lines = [f"cnnkernels.patch(backend={self.backend!r}, fuse={self.fuse}): "
                 f"{len(self.replaced)} layers replaced, {len(self.fused)} fused, "
                 f"{len(self.left_alone)} left alone",
                 "replaced: " + (", ".join(f"{kind} x{n}" for kind, n in counts.items())
                                 or "nothing")]
        if self.fused:
            lines.append("fused:")
            lines += [f"  {name or '(model)'}: {what}" for name, what in self.fused]
        groups: dict[tuple[str, str], list[str]] = {}
        for name, kind, reason in self.left_alone:
            groups.setdefault((kind, reason), []).append(name or "(model)")
        if groups:
            lines.append("left alone:")
            for (kind, reason), names in groups.items():
                shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more"
                                                if len(names) > 4 else "")
                lines.append(f"  {kind} x{len(names)} ({shown}): {reason}")
        return "\n".join(lines)


def _remember(module: torch.nn.Module, attributes: dict) -> None:
    """Record (once: the first patch's) what unpatch restores."""
    if _RESTORE not in module.__dict__:
        module.__dict__[_RESTORE] = (type(module), {name: module.__dict__.get(name, _ABSENT)
                                                    for name in attributes})
    else:
        saved = module.__dict__[_RESTORE][1]
        for name in attributes:
            saved.setdefault(name, module.__dict__.get(name, _ABSENT))
    module.__dict__.update(attributes)


def _why_not_replaced(module: torch.nn.Module) -> str | None:
    """Why a torch layer of a class with a twin cannot run on cnnkernels
    exactly, or None when it can."""
    if isinstance(module, torch.nn.ConvTranspose2d) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (torch's runs only 'zeros' too)"
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dtype not in _COMPUTED_DTYPES:
        return f"weight dtype {weight.dtype}: cnnkernels computes float16/bfloat16/float32/float64"
    return None


def _subclass_reason(module: torch.nn.Module) -> str | None:
    """Why a module that is a subclass of a layer with a twin is left alone."""
    for torch_class in _TWINS:
        if isinstance(module, torch_class) and type(module) is not torch_class:
            if isinstance(module, torch.nn.modules.lazy.LazyModuleMixin):
                return "an uninitialised lazy module: patch after its first forward"
            if torch.nn.utils.parametrize.is_parametrized(module):
                return ("parametrized (torch.nn.utils.parametrize made its class; switching "
                        "it would drop the parametrization)")
            return (f"a subclass of torch.nn.{torch_class.__name__} (its forward may differ "
                    f"from torch's)")
    return None


def patch(model: torch.nn.Module, *, backend: str | None = None,
          fuse: bool = False) -> torch.nn.Module:
    """Make ``model``'s torch.nn Conv2d, ConvTranspose2d and 2-D pooling
    layers run on cnnkernels, in place, and return ``model``: parameters
    and buffers (the same tensors: optimizers keep working), hooks, state
    dict and module tree stay as they are; ``model.cnnkernels_report`` (a
    ``PatchReport``; print it) lists what was replaced, fused and left
    alone and why. Only exact torch classes are replaced (a subclass may
    compute something else); a ConvTranspose2d with a padding_mode other
    than zeros (which torch refuses to run too) and weights of a dtype no
    backend computes are left alone. Layers already on cnnkernels
    (``cnnkernels.nn``) are kept, and pinned too.

    ``backend`` ("auto", "cpu", "cuda", "triton") pins the patched layers'
    ops to that backend, under torch.compile too; None leaves them on the
    current choice of ``cnnkernels.use``.

    ``fuse=True`` (for inference: the model must be in eval mode) also
    folds batch norm into convolutions and fuses activations and residual
    adds into their epilogue (``cnnkernels.nn.conv_norm_activation``), where
    that is exact:

    - in an ``nn.Sequential`` (or a subclass that keeps its forward, such as
      torchvision's Conv2dNormActivation): a cnnkernels Conv2d without an
      activation of its own, then optionally a BatchNorm2d, then optionally
      a ReLU, ReLU6 or SiLU (exact classes);
    - torchvision's blocks, recognised by class name, attributes of the
      exact classes above (the convs patched) and a forward that reads
      exactly those attributes, which is then taken to compute what
      torchvision's forward does:
      ``BasicBlock`` (ResNet-18/34: conv1, bn1, relu, conv2, bn2,
      downsample; ``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``,
      identity = downsample(x) or x) and ``Bottleneck`` (ResNet-50 and up:
      conv3, bn3 too, one conv-bn-relu more), whose last convolution adds
      the shortcut in its epilogue; ``InvertedResidual`` (MobileNetV2: conv,
      a Sequential ending in a conv and a batch norm, and use_res_connect;
      ``x + conv(x)`` or ``conv(x)``), the shortcut added by the last conv;
      ``BasicConv2d`` (GoogLeNet, Inception v3: conv, bn;
      ``F.relu(bn(conv(x)))``).

    Modules with hooks are not fused (a fused module is not called).
    In training mode the fused forwards run the original modules in turn,
    so a fused model put back in training computes what torch does.
    ``cnnkernels.unpatch(model)`` undoes all of it.
    """
    if backend is not None:
        check_choice("backend", backend, BACKENDS)
    if fuse and model.training:
        training = [name or "(model)" for name, m in model.named_modules() if m.training]
        raise RuntimeError(f"patch(fuse=True) folds batch norms' running statistics into the "
                           f"convolutions, which is what eval mode computes, but the model is in "
                           f"training mode ({', '.join(training[:3])}...): call model.eval() "
                           f"first")
    report = PatchReport(backend, fuse)
    covered = set()  # the norms and activations cnnkernels blocks fuse themselves
    for name, module in model.named_modules():
        twin = _TWINS.get(type(module))
        if twin is not None:
            reason = _why_not_replaced(module)
            if reason is not None:
                report.left_alone.append((name, type(module).__name__, reason))
                continue
            report.replaced.append((name, type(module).__name__))
            _remember(module, {} if backend is None else {"backend": backend})
            module.__class__ = twin
        elif isinstance(module, _OURS):
            if backend is not None:
                _remember(module, {"backend": backend})
        elif isinstance(module, nn.Conv2dNormActivation):
            covered.update(id(m) for m in module)
        else:
            reason = _subclass_reason(module)
            if reason is not None:
                report.left_alone.append((name, type(module).__name__, reason))
    covered |= _fuse(model, report) if fuse else set()
    for name, module in model.named_modules():
        if (not list(module.children()) and not isinstance(module, (*_OURS, *_TWINS))
                and id(module) not in covered):
            report.left_alone.append((name, type(module).__name__,
                                      "no cnnkernels layer: torch runs it"))
    model.__dict__[REPORT] = report
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``cnnkernels.patch`` on ``model`` in place and return it: the
    patched layers are their torch.nn classes again with the attributes
    they had, the fused forwards are gone (the batch norms, never removed,
    run again) and ``model.cnnkernels_report`` too. Layers built as
    cnnkernels.nn modules stay so."""
    for module in model.modules():
        module.__dict__.pop(nn.FOLD_CACHE, None)
        record = module.__dict__.pop(_RESTORE, None)
        if record is not None:
            original_class, attributes = record
            module.__class__ = original_class
            for name, value in attributes.items():
                if value is _ABSENT:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
    model.__dict__.pop(REPORT, None)
    return model


def _hooked(*modules) -> bool:
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


def _fusable_conv(module) -> bool:
    return type(module) is nn.Conv2d and module.activation is None and not _hooked(module)


def _fused_sequential(sequential: torch.nn.Sequential, steps: tuple, input):
    for step in steps:
        input = nn.conv_norm_activation(*step, input) if isinstance(step, tuple) else step(input)
    return input


def _sequential_steps(sequential: torch.nn.Sequential):
    """The steps of a fused Sequential: a module, or (conv, norm, activation)
    for a chain, each of the last two None when absent; with the names of
    the fused chains' modules."""
    children = list(sequential.named_children())
    steps, chains, i = [], [], 0
    while i < len(children):
        conv = children[i][1]
        chain = [f"[{children[i][0]}] Conv2d"]
        norm = activation = None
        if _fusable_conv(conv):
            j = i + 1
            if j < len(children) and type(children[j][1]) is torch.nn.BatchNorm2d \
                    and not _hooked(children[j][1]):
                norm = children[j][1]
                chain.append(f"[{children[j][0]}] BatchNorm2d")
                j += 1
            if j < len(children) and type(children[j][1]) in nn.FUSED_ACTIVATIONS \
                    and not _hooked(children[j][1]):
                activation = children[j][1]
                chain.append(f"[{children[j][0]}] {type(activation).__name__}")
                j += 1
            if j > i + 1:
                steps.append((conv, norm, activation))
                chains.append(chain)
                i = j
                continue
        steps.append(conv)
        i += 1
    return tuple(steps), chains


# torchvision's blocks fusion recognises (see patch's docstring): class
# name -> its (conv, bn) attribute pairs and everything else its forward
# reads.
_BLOCKS = {
    "BasicBlock": ((("conv1", "bn1"), ("conv2", "bn2")), {"relu", "downsample"}),
    "Bottleneck": ((("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
                   {"relu", "downsample"}),
    "BasicConv2d": ((("conv", "bn"),), {"F", "relu"}),
    "InvertedResidual": ((), {"use_res_connect", "conv"}),
}
# What BasicConv2d's forward applies as torch.nn.functional.relu.
_RELU = torch.nn.ReLU()


def _fusable_pair(conv, norm) -> bool:
    return _fusable_conv(conv) and type(norm) is torch.nn.BatchNorm2d and not _hooked(norm)


def _fused_resnet_block(block, x, pairs: tuple):
    identity = x if block.downsample is None else block.downsample(x)
    out = x
    for conv, bn in pairs[:-1]:
        out = nn.conv_norm_activation(conv, bn, block.relu, out)
    conv, bn = pairs[-1]
    return nn.conv_norm_activation(conv, bn, block.relu, out, identity)


def _fused_basic_conv(block, x):
    return nn.conv_norm_activation(block.conv, block.bn, _RELU, x)


def _fused_inverted_residual(block, x):
    if not block.use_res_connect:
        return block.conv(x)
    *head, conv, bn = block.conv
    out = x
    for module in head:
        out = module(out)
    return nn.conv_norm_activation(conv, bn, None, out, x)


def _block_plan(block) -> tuple | None:
    """(fused forward, the modules it folds in, what it fuses) for a block
    with torchvision's structure, or None."""
    kind = type(block).__name__
    pair_names, others = _BLOCKS[kind]
    read = {*others, *(name for pair in pair_names for name in pair)}
    if _hooked(block) or set(type(block).forward.__code__.co_names) != read:
        return None
    pairs = tuple((getattr(block, c, None), getattr(block, b, None)) for c, b in pair_names)
    if not all(_fusable_pair(conv, bn) for conv, bn in pairs):
        return None
    if kind == "BasicConv2d":
        return _fused_basic_conv, set(pairs[0]), "conv+bn+relu"
    if kind == "InvertedResidual":
        layers = block.conv
        if type(layers) is not torch.nn.Sequential or _hooked(layers) or len(layers) < 2 \
                or not _fusable_pair(layers[-2], layers[-1]):
            return None
        return (_fused_inverted_residual, {layers[-2], layers[-1]},
                f"the shortcut added in conv[{len(layers) - 2}] (when use_res_connect)")
    if type(getattr(block, "relu", None)) is not torch.nn.ReLU or _hooked(block.relu):
        return None
    described = ", ".join(f"{c}+{b}+relu" for c, b in pair_names)
    return (functools.partial(_fused_resnet_block, pairs=pairs), {block.relu, *sum(pairs, ())},
            f"{described}, the shortcut added in {pair_names[-1][0]}")


def _fuse(model: torch.nn.Module, report: PatchReport) -> set:
    """Install the fused forwards; the ids of the modules they fold in."""
    fused = set()
    for name, module in model.named_modules():
        if type(module).__name__ in _BLOCKS:
            plan = _block_plan(module)
            if plan is None:
                report.left_alone.append((name, type(module).__name__,
                                          "not fused: not torchvision's structure (see patch)"))
                continue
            forward, members, described = plan
            _remember(module, {"forward": functools.partial(forward, module)})
            fused.update(id(m) for m in members)
            report.fused.append((name, f"{type(module).__name__}: {described}"))
        elif isinstance(module, torch.nn.Sequential) \
                and type(module).forward is torch.nn.Sequential.forward:
            steps, chains = _sequential_steps(module)
            if chains:
                _remember(module, {"forward": functools.partial(_fused_sequential, module,
                                                                steps)})
                fused.update(id(m) for step in steps if isinstance(step, tuple)
                             for m in step if m is not None)
                report.fused.append((name, "; ".join(" + ".join(c) for c in chains)))
    return fused
