"""Drop-in modules: ``cnnkernels.nn.Conv2d``, ``ConvTranspose2d``, ``MaxPool2d``, ``AvgPool2d``,
``AdaptiveAvgPool2d`` and ``AdaptiveMaxPool2d`` are the torch.nn modules of
the same name (subclasses: same constructor, parameters, state dict)
computed by cnnkernels' ops; Conv2d and ConvTranspose2d take an optional
fused ``activation``, and every one an optional ``backend`` that pins its
ops to one backend ("auto", "cpu", "cuda", "triton"; None: the current
choice of ``cnnkernels.use``).
``Conv2dNormActivation`` is torchvision's block of that name whose eval
forward is one convolution with the batch norm folded in and the
activation (and a residual) in its epilogue. ``TripletMarginLoss`` is
torch's loss on the fused triplet kernel.
``cnnkernels.patch(model)`` (cnnkernels/_patch.py) switches the torch.nn
modules of an existing model to these in place."""

import torch as _torch
from torch.nn import functional as _F
from torch.nn.modules.utils import _pair

from cnnkernels import _args, _backend
from cnnkernels import ops as _ops

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "Conv2d", "Conv2dNormActivation",
           "ConvTranspose2d", "MaxPool2d", "TripletMarginLoss"]


def _pinned_backend(backend):
    return None if backend is None else _backend.check_choice("backend", backend,
                                                              _backend.BACKENDS)


class _OnBackend:
    """The ``backend`` every module here runs its ops on (None: the current
    choice). Class attributes give the defaults of modules that
    ``cnnkernels.patch`` switched to these classes without constructing them."""

    backend: str | None = None

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _pinned_backend(backend)

    def extra_repr(self) -> str:
        extra = "".join(f", {name}={getattr(self, name)!r}" for name in ("activation", "backend")
                        if getattr(self, name, None) is not None)
        return super().extra_repr() + extra


class Conv2d(_OnBackend, _torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on cnnkernels' kernels. ``activation`` (None,
    "relu", "relu6", "silu") is applied in the convolution's epilogue."""

    activation: str | None = None  # the default of a module patch switched

    def __init__(self, *args, activation: str | None = None, backend: str | None = None,
                 **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        _args.activation(activation)
        self.activation = activation

    def _conv_forward(self, input, weight, bias):
        return self.epilogue_forward(input, weight, bias, self.activation)

    def epilogue_forward(self, input, weight, bias, activation: str | None, residual=None):
        """This layer's convolution (stride, padding, padding_mode, dilation,
        groups, backend) of ``input`` with ``weight`` and ``bias`` (its own,
        or with a batch norm folded in), and the fused epilogue
        ``activation(conv + bias + residual)``."""
        padding = self.padding
        if self.padding_mode != "zeros":
            # torch pads reflect/replicate/circular explicitly too.
            input = _F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return _ops.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                           activation=activation, residual=residual, backend=self.backend)


class ConvTranspose2d(_OnBackend, _torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on cnnkernels' kernels (forward's
    ``output_size`` chooses the output_padding as torch does). ``activation``
    (None, "relu", "relu6", "silu") is applied after the bias, fused."""

    activation: str | None = None  # the default of a module patch switched

    def __init__(self, *args, activation: str | None = None, backend: str | None = None,
                 **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        _args.activation(activation)
        self.activation = activation

    def forward(self, input, output_size: list[int] | None = None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return _ops.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                     output_padding, self.groups, self.dilation,
                                     activation=self.activation, backend=self.backend)


class MaxPool2d(_OnBackend, _torch.nn.MaxPool2d):
    def forward(self, input):
        return _ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                               self.ceil_mode, self.return_indices, backend=self.backend)


class AvgPool2d(_OnBackend, _torch.nn.AvgPool2d):
    def forward(self, input):
        return _ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                               self.count_include_pad, self.divisor_override,
                               backend=self.backend)


class AdaptiveAvgPool2d(_OnBackend, _torch.nn.AdaptiveAvgPool2d):
    def forward(self, input):
        return _ops.adaptive_avg_pool2d(input, self.output_size, backend=self.backend)


class AdaptiveMaxPool2d(_OnBackend, _torch.nn.AdaptiveMaxPool2d):
    def forward(self, input):
        return _ops.adaptive_max_pool2d(input, self.output_size, self.return_indices,
                                        backend=self.backend)


class TripletMarginLoss(_torch.nn.TripletMarginLoss):
    """``torch.nn.TripletMarginLoss`` on cnnkernels' fused triplet kernel."""

    def forward(self, anchor, positive, negative):
        return _ops.triplet_margin_loss(anchor, positive, negative, margin=self.margin,
                                        p=self.p, eps=self.eps, swap=self.swap,
                                        reduction=self.reduction)


# The activation modules a convolution's epilogue computes exactly (their
# exact classes: a subclass may compute something else).
FUSED_ACTIVATIONS = {_torch.nn.ReLU: "relu", _torch.nn.ReLU6: "relu6", _torch.nn.SiLU: "silu"}


def foldable(norm) -> bool:
    """Whether ``norm`` (None for no norm) can be folded into the preceding
    convolution: a ``torch.nn.BatchNorm2d`` (exactly: subclasses and
    SyncBatchNorm may normalise differently) in eval mode that normalises
    with its running statistics (with track_running_stats=False eval mode
    uses the batch's)."""
    return norm is None or (type(norm) is _torch.nn.BatchNorm2d and not norm.training
                            and norm.running_mean is not None and norm.running_var is not None)


# The conv attribute holding its last fold: (key, norm, weight, bias).
FOLD_CACHE = "_cnnkernels_folded"


def fold_batch_norm(conv: _torch.nn.Conv2d, norm: _torch.nn.BatchNorm2d | None):
    """The weight and bias of ``conv`` followed by ``norm`` in eval mode:
    with s = gamma / sqrt(running_var + eps) per output channel,
    W' = W * s and b' = (b - running_mean) * s + beta, computed in at least
    float32.

    Why cached: the fold is a pass over the weight (K*C/groups*R*S
    elements) per call, a visible share of small-batch inference
    (ResNet-18, batch 8 at 64x64 on one cpu thread: 23 ms of ~350). The
    cache (on the conv) is keyed by each tensor's storage and version
    counter, which every in-place change bumps (optimizer steps,
    load_state_dict's copy_, edits under no_grad), and by the norm's eps:
    it is recomputed exactly when a value may have changed. Not cached,
    computed in the graph instead: when a gradient is required (the fold is
    differentiable with respect to the conv's and the norm's parameters),
    under torch.compile (traced and fused like any elementwise op) and for
    inference tensors (no version counter)."""
    if norm is None:
        return conv.weight, conv.bias
    tensors = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean,
               norm.running_var)
    present = [t for t in tensors if t is not None]
    if (_torch.compiler.is_compiling() or any(t.is_inference() for t in present)
            or (_torch.is_grad_enabled() and any(t.requires_grad for t in present))):
        return _fold(conv, norm)
    key = (norm.eps, *(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device)
                       for t in tensors))
    cached = conv.__dict__.get(FOLD_CACHE)
    if cached is None or cached[0] != key or cached[1] is not norm:
        cached = (key, norm, *_fold(conv, norm))
        conv.__dict__[FOLD_CACHE] = cached
    return cached[2], cached[3]


def _fold(conv: _torch.nn.Conv2d, norm: _torch.nn.BatchNorm2d):
    dtype = _torch.promote_types(conv.weight.dtype, _torch.float32)
    scale = _torch.rsqrt(norm.running_var.to(dtype) + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.to(dtype)
    shift = -norm.running_mean.to(dtype)
    if conv.bias is not None:
        shift = shift + conv.bias.to(dtype)
    bias = shift * scale
    if norm.bias is not None:
        bias = bias + norm.bias.to(dtype)
    weight = conv.weight.to(dtype) * scale.view(-1, 1, 1, 1)
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def conv_norm_activation(conv: Conv2d, norm, activation, input, residual=None):
    """``activation(norm(conv(input)) + residual)`` (each part optional:
    None) where ``conv`` is a cnnkernels Conv2d with no activation of its
    own: one convolution with the norm folded in (``foldable``) and the
    activation (relu, relu6, silu: ``FUSED_ACTIVATIONS``) and residual in
    its epilogue; another activation module runs after it. Otherwise (a
    batch norm in training mode, another norm) the modules in turn."""
    fused = "none" if activation is None else FUSED_ACTIVATIONS.get(type(activation))
    if foldable(norm):
        weight, bias = fold_batch_norm(conv, norm)
        output = conv.epilogue_forward(input, weight, bias, None if fused == "none" else fused,
                                       residual)
        return output if fused is not None else activation(output)
    output = conv(input)
    if norm is not None:
        output = norm(output)
    if residual is not None:
        output = output + residual
    return output if activation is None else activation(output)


class Conv2dNormActivation(_torch.nn.Sequential):
    """``torchvision.ops.Conv2dNormActivation`` on cnnkernels: the same
    constructor, an ``nn.Sequential`` of the same submodules (a cnnkernels
    Conv2d, ``norm_layer(out_channels)``, ``activation_layer(inplace=...)``,
    the last two optional) with the same state dict keys, so torchvision's
    weights load unchanged; ``backend`` pins the convolution to a backend.

    ``forward(input, residual=None)`` computes
    ``activation(norm(conv(input)) + residual)`` (``residual``: a tensor of
    the output's shape, e.g. a ResNet shortcut, added before the
    activation). With no norm, or a BatchNorm2d in eval mode, that is one
    convolution: the norm folded into its weight and bias (``fold_batch_norm``:
    cached until a parameter or buffer changes) and
    the activation (ReLU, ReLU6, SiLU; others run after it) and residual in
    its epilogue; the norm and activation modules are then not called (their
    hooks do not run). In training mode (batch statistics) the
    submodules run in turn: exactly conv, batch norm, residual, activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None,
                 groups: int = 1, norm_layer=_torch.nn.BatchNorm2d,
                 activation_layer=_torch.nn.ReLU, dilation=1, inplace: bool | None = True,
                 bias: bool | None = None, *, backend: str | None = None):
        if padding is None:
            # torchvision's default: the padding that keeps the size at stride 1.
            padding = tuple((k - 1) // 2 * d for k, d in zip(_pair(kernel_size), _pair(dilation),
                                                           strict=True))
        if bias is None:
            bias = norm_layer is None
        layers = [Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                         dilation=dilation, groups=groups, bias=bias, backend=backend)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(**({} if inplace is None else {"inplace": inplace})))
        super().__init__(*layers)
        self.out_channels = out_channels
        self.has_norm = norm_layer is not None

    def forward(self, input, residual=None):
        conv, *rest = self
        norm = rest.pop(0) if self.has_norm else None
        activation = rest[0] if rest else None
        return conv_norm_activation(conv, norm, activation, input, residual)
