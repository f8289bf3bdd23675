"""cnnkernels.nn.Conv2dNormActivation, and cnnkernels.patch / unpatch with
backend pinning, fusion and the report, against the same models on plain
torch (float64) with the same weights: torchvision's blocks rebuilt in
torchvision_like.py, and torchvision's own models where it is installed."""

import copy

import pytest
import torch
import torchvision_like as tv
from reference import assert_close

import cnnkernels as ck

F64 = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def eval_copy_pair(model: torch.nn.Module, seed: int):
    """(reference, copy to patch) in float64 eval mode with visible batch norms."""
    reference = tv.randomize_batch_norms(model, generator(seed)).to(F64).eval()
    return reference, copy.deepcopy(reference)


def grads(model: torch.nn.Module, x: torch.Tensor):
    """Output, the input's gradient and every parameter's, of sum(output * weights)."""
    model.zero_grad()
    x = x.detach().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, [p.grad for p in model.parameters()]


def assert_same_results(actual, expected, reduction: int, what: str) -> None:
    out, grad_x, grad_params = actual
    assert_close(out, expected[0], F64, reduction, f"{what}: output")
    assert_close(grad_x, expected[1], F64, reduction, f"{what}: input gradient")
    for i, (a, e) in enumerate(zip(grad_params, expected[2], strict=True)):
        assert_close(a, e, F64, 10 * reduction, f"{what}: gradient of parameter {i}")


# --- Conv2dNormActivation ---------------------------------------------------

@pytest.mark.parametrize("activation_layer", [torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU,
                                              torch.nn.Hardswish, None])
@pytest.mark.parametrize("with_residual", [False, True])
def test_conv_norm_activation_eval_is_the_torch_composition(activation_layer, with_residual):
    """Eval: one convolution with the batch norm folded in (and the
    activation fused where the epilogue has it), equal to conv -> bn ->
    + residual -> activation on torch, forward and backward."""
    torch.manual_seed(3)
    block = ck.nn.Conv2dNormActivation(4, 6, 3, stride=2, groups=2,
                                       activation_layer=activation_layer)
    reference = torch.nn.Sequential(*[copy.deepcopy(m) for m in block])
    reference[0].__class__ = torch.nn.Conv2d
    tv.randomize_batch_norms(block, generator(4))
    reference.load_state_dict(block.state_dict())
    block, reference = block.to(F64).eval(), reference.to(F64).eval()
    x = torch.randn(2, 4, 9, 8, dtype=F64) * 3
    residual = torch.randn(2, 6, 5, 4, dtype=F64) if with_residual else None

    def torch_block(t):
        out = reference[1](reference[0](t))
        out = out + residual if residual is not None else out
        return reference[2](out) if activation_layer is not None else out

    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = block(x1, residual), torch_block(x2)
    assert_close(out, expected, F64, 18, "output")
    out.square().sum().backward()
    expected.square().sum().backward()
    assert_close(x1.grad, x2.grad, F64, 54, "input gradient")
    for (name, p), q in zip(block.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, F64, 1000, f"gradient of {name}")


def test_conv_norm_activation_training_is_conv_batch_norm_activation():
    """Training: batch statistics and running-statistics updates as torch's."""
    torch.manual_seed(5)
    block = ck.nn.Conv2dNormActivation(3, 5, 3, activation_layer=torch.nn.SiLU).to(F64)
    reference = copy.deepcopy(block)
    reference[0].__class__ = torch.nn.Conv2d
    x = torch.randn(3, 3, 7, 7, dtype=F64)
    residual = torch.randn(3, 5, 7, 7, dtype=F64)
    out = block(x, residual)
    expected = reference[2](reference[1](reference[0](x)) + residual)
    assert_close(out, expected, F64, 27, "output")
    out.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(block.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, F64, 1000, f"gradient of {name}")
    for name, buffer in block[1].named_buffers():
        torch.testing.assert_close(buffer, getattr(reference[1], name), msg=name)


def test_conv_norm_activation_has_torchvisions_layout():
    """Same submodules, state-dict keys and shapes as torchvision's block
    (as rebuilt in torchvision_like), so its weights load unchanged; no
    norm gives a conv bias like torchvision."""
    ours = ck.nn.Conv2dNormActivation(4, 8, 3, stride=2, activation_layer=torch.nn.ReLU6)
    theirs = tv.Conv2dNormActivation(4, 8, 3, stride=2, activation_layer=torch.nn.ReLU6)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    assert ours[0].padding == theirs[0].padding == (1, 1) and ours.out_channels == 8
    assert [type(m) for m in ours][1:] == [torch.nn.BatchNorm2d, torch.nn.ReLU6]
    plain = ck.nn.Conv2dNormActivation(4, 8, 5, norm_layer=None, dilation=2)
    assert plain[0].bias is not None and plain[0].padding == (4, 4) and len(plain) == 2


def test_conv_norm_activation_rejects_a_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.nn.Conv2dNormActivation(1, 1, backend="gpu")


# --- patch: replacement, optimizers, report ---------------------------------

def test_patch_keeps_parameters_so_an_optimizer_keeps_working():
    """An optimizer made before patch steps the patched model's parameters
    (the same tensors), and training then matches torch's step for step."""
    torch.manual_seed(6)
    reference = tv.resnet18(width=4).to(F64)
    model = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    parameters = list(model.parameters())
    assert ck.patch(model) is model
    assert [p is q for p, q in zip(model.parameters(), parameters, strict=True)] == \
        [True] * len(parameters)
    x, y = torch.randn(2, 3, 32, 32, dtype=F64), torch.tensor([1, 7])
    for step in range(2):
        for net, opt in ((model, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        # Batch statistics of 2 images (1 pixel in the last stage) amplify
        # rounding differences: float64 to 1e-9, far below what a wrong
        # parameter update (lr 0.1) would change.
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=f"step {step}: {name}")


def test_patch_reports_what_it_replaced_and_left_alone():
    class MyConv(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        torch.nn.ConvTranspose2d(4, 4, 2, stride=2),
        MyConv(4, 4, 1), torch.nn.LazyConv2d(4, 1), torch.nn.BatchNorm2d(4),
        torch.nn.MaxPool2d(2),
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(4, 4, 1)),
        ck.nn.Conv2dNormActivation(4, 4))
    ck.patch(model)
    report = model.cnnkernels_report
    assert isinstance(report, ck.PatchReport)
    assert report.replaced == [("0", "Conv2d"), ("1", "ConvTranspose2d"), ("5", "MaxPool2d")]
    reasons = {name: reason for name, _, reason in report.left_alone}
    assert "subclass of torch.nn.Conv2d" in reasons["2"]
    assert "lazy" in reasons["3"]
    assert reasons["4"] == "no cnnkernels layer: torch runs it"
    assert "parametrized" in reasons["6"]
    assert not [name for name in reasons if name.startswith("7")]  # fuses its norm itself
    assert type(model[6]).__name__ == "ParametrizedConv2d"
    text = str(report)
    assert "3 layers replaced" in text and "Conv2d x1" in text and "MyConv x1" in text


def test_patch_leaves_a_transposed_conv_with_another_padding_mode_alone():
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(2, 2, 3))
    model[0].padding_mode = "reflect"
    ck.patch(model)
    assert type(model[0]) is torch.nn.ConvTranspose2d
    assert "padding_mode='reflect'" in model.cnnkernels_report.left_alone[0][2]


def test_unpatch_restores_the_torch_model_exactly():
    torch.manual_seed(7)
    reference, model = eval_copy_pair(tv.resnet50(width=2), 8)
    attributes = {name: dict(m.__dict__) for name, m in model.named_modules()}
    ck.patch(model, backend="cpu", fuse=True)
    assert model.cnnkernels_report.fused
    assert ck.unpatch(model) is model
    assert not hasattr(model, "cnnkernels_report")
    for (name, m), r in zip(model.named_modules(), reference.modules(), strict=True):
        assert type(m) is type(r), name
        assert m.__dict__.keys() == attributes[name].keys(), name
    x = torch.randn(1, 3, 32, 32, dtype=F64)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


# --- backend pinning --------------------------------------------------------

def test_patch_pins_the_backend():
    """Pinned layers run on their backend whatever ck.use says; a backend
    that cannot run the tensors says so."""
    torch.manual_seed(9)
    reference = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.AvgPool2d(2)).to(F64)
    model = ck.patch(copy.deepcopy(reference), backend="cpu")
    assert all(m.backend == "cpu" for m in model) and "backend='cpu'" in repr(model)
    x = torch.randn(1, 2, 8, 8, dtype=F64)
    with ck.use(backend="cuda"):  # would refuse CPU tensors
        assert_close(model(x), reference(x), F64, 18, "output")
    ck.patch(model, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        model(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.patch(model, backend="gpu")
    ck.unpatch(model)
    assert all("backend" not in m.__dict__ for m in model)


def test_layers_built_with_a_backend_keep_it():
    torch.manual_seed(24)
    layers = [ck.nn.Conv2d(2, 3, 3, backend="cpu"), ck.nn.MaxPool2d(2, backend="cpu"),
              ck.nn.ConvTranspose2d(3, 2, 2, backend="cpu"), ck.nn.AvgPool2d(2, backend="cpu"),
              ck.nn.AdaptiveMaxPool2d(3, backend="cpu"), ck.nn.AdaptiveAvgPool2d(1, backend="cpu")]
    model = torch.nn.Sequential(*layers).to(F64)
    reference = copy.deepcopy(model)
    ck.unpatch(reference)  # built as cnnkernels layers: they stay so
    assert all(type(m).__module__ == "cnnkernels.nn" for m in reference)
    for m in reference:
        m.__class__ = m.__class__.__mro__[2]
    x = torch.randn(1, 2, 12, 12, dtype=F64)
    with ck.use(backend="cuda"):  # would refuse CPU tensors
        assert_close(model(x), reference(x), F64, 18, "output")
    assert "backend='cpu'" in repr(model[1])


# --- fusion -----------------------------------------------------------------

@pytest.mark.parametrize("make, size", [(lambda: tv.resnet18(width=4), 32),
                                        (lambda: tv.resnet50(width=2), 32),
                                        (tv.mobilenet_v2_small, 16),
                                        (tv.inception_stem_small, 24)],
                         ids=["resnet18", "resnet50", "mobilenet_v2", "googlenet_stem"])
def test_fused_model_equals_torch_forward_and_backward(make, size):
    torch.manual_seed(10)
    reference, model = eval_copy_pair(make(), 11)
    ck.patch(model, fuse=True)
    x = torch.randn(2, 3, size, size, dtype=F64)
    assert_same_results(grads(model, x), grads(reference, x), 500, "fused")


def test_fused_model_sees_every_change_of_its_parameters_and_buffers():
    """Inference caches the folded weights: in-place edits, an optimizer
    step and load_state_dict must all show in the next output."""
    reference, model = eval_copy_pair(tv.resnet18(width=2), 19)
    ck.patch(model, fuse=True)
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    for change in range(4):
        with torch.no_grad():
            assert_close(model(x), reference(x), F64, 500, f"after change {change}")
        for net in (model, reference):
            if change == 0:
                with torch.no_grad():
                    net.layer1[0].bn1.running_var.mul_(2)
                    net.layer2[0].conv2.weight.add_(0.1)
            elif change == 1:
                net.layer3[1].bn2.eps = 0.5
            elif change == 2:
                torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1])).backward()
                torch.optim.SGD(net.parameters(), lr=0.5).step()
        if change == 3:
            state = tv.randomize_batch_norms(copy.deepcopy(reference), generator(20)).state_dict()
            model.load_state_dict(state)
            reference.load_state_dict(state)
            with torch.no_grad():
                assert_close(model(x), reference(x), F64, 500, "after load_state_dict")


def test_fusion_report_names_the_patterns():
    _, model = eval_copy_pair(tv.resnet18(width=2), 12)
    ck.patch(model, fuse=True)
    fused = dict(model.cnnkernels_report.fused)
    assert fused["layer1.0"] == ("BasicBlock: conv1+bn1+relu, conv2+bn2+relu, the shortcut "
                                 "added in conv2")
    assert fused["layer2.0.downsample"] == "[0] Conv2d + [1] BatchNorm2d"
    assert len(fused) == 8 + 3
    _, mobile = eval_copy_pair(tv.mobilenet_v2_small(), 12)
    ck.patch(mobile, fuse=True)
    fused = dict(mobile.cnnkernels_report.fused)
    assert fused["0.2.conv"] == "[2] Conv2d + [3] BatchNorm2d"
    assert fused["0.3"] == ("InvertedResidual: the shortcut added in conv[2] (when "
                            "use_res_connect)")
    _, stem = eval_copy_pair(tv.inception_stem_small(), 12)
    ck.patch(stem, fuse=True)
    assert dict(stem.cnnkernels_report.fused)["2"] == "BasicConv2d: conv+bn+relu"


def test_fused_model_back_in_training_mode_computes_torchs_training_forward():
    reference, model = eval_copy_pair(tv.resnet18(width=2), 13)
    ck.patch(model, fuse=True)
    model.train()
    reference.train()
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    assert_same_results(grads(model, x), grads(reference, x), 500, "training")
    for (name, b), c in zip(model.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(b, c, msg=name)


def test_fuse_refuses_training_mode():
    with pytest.raises(RuntimeError, match=r"fuse=True.*training mode.*model.eval\(\)"):
        ck.patch(tv.resnet18(width=2), fuse=True)


def test_blocks_that_are_not_torchvisions_are_not_fused():
    """A block named BasicBlock whose forward reads something else, and a
    chain with a hook (a fused module is never called), stay unfused and
    still compute what torch does."""

    class BasicBlock(tv.BasicBlock):
        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.conv1(x)))) * self.stride

    block = BasicBlock(4, 4)
    hooked = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))
    calls = []
    hooked[1].register_forward_hook(lambda *_: calls.append(1))
    reference, model = eval_copy_pair(torch.nn.Sequential(block, hooked), 14)
    ck.patch(model, fuse=True)
    assert not model.cnnkernels_report.fused
    assert "not torchvision's structure" in dict(
        (n, r) for n, _, r in model.cnnkernels_report.left_alone)["0"]
    x = torch.randn(1, 4, 6, 6, dtype=F64)
    assert_close(model(x), reference(x), F64, 72, "output")
    assert calls == [1, 1]


# --- torchvision itself (installed on the GPU machines) ---------------------

@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "vgg16", "googlenet"])
def test_torchvision_models_patched_and_fused(name):
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(15)
    kwargs = {"init_weights": True, "aux_logits": False} if name == "googlenet" else {}
    reference = tv.randomize_batch_norms(getattr(models, name)(num_classes=10, **kwargs),
                                         generator(16)).to(F64)
    patched = ck.patch(copy.deepcopy(reference))
    assert patched.cnnkernels_report.replaced
    size = 64 if name != "googlenet" else 96
    x = torch.randn(1, 3, size, size, dtype=F64)
    reference.eval()
    patched.eval()
    assert_same_results(grads(patched, x), grads(reference, x), 5000, f"patched {name}")
    fused = ck.patch(copy.deepcopy(reference), fuse=True)
    assert fused.cnnkernels_report.fused
    assert_same_results(grads(fused, x), grads(reference, x), 5000, f"fused {name}")


# --- torch.compile ----------------------------------------------------------

def compiled_resnet_matches_eager(backend: str) -> None:
    """A patched ResNet-18 (torchvision's structure, width 4, one 64x64
    image), pinned to the cpu backend, compiled with fullgraph=True (no
    graph break allowed) under a global choice that could not run it:
    training forward and backward (the compiled backward graph), then an
    SGD step, as eager torch; and the fused eval model's forward."""
    torch.manual_seed(17)
    reference = tv.randomize_batch_norms(tv.resnet18(width=4), generator(18))
    model = ck.patch(copy.deepcopy(reference), backend="cpu")
    eval_reference = copy.deepcopy(reference).eval()
    fused = ck.patch(copy.deepcopy(eval_reference), backend="cpu", fuse=True)
    x, y = torch.randn(1, 3, 64, 64), torch.tensor([3])
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference)]
    with ck.use(backend="cuda"):
        loss = torch.nn.functional.cross_entropy(
            torch.compile(model, fullgraph=True, backend=backend)(x), y)
        fused_out = torch.compile(fused, fullgraph=True, backend=backend)(x)
    expected = torch.nn.functional.cross_entropy(reference(x), y)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for net_loss, optimizer in zip((loss, expected), optimizers, strict=True):
        net_loss.backward()  # the compiled model's backward graph
        # torch's optimizers break the graph on purpose (_use_grad in
        # torch/optim/optimizer.py); compiling one tests torch, not us.
        optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fused_out, eval_reference(x), rtol=1e-4, atol=1e-5)


def test_compiled_patched_resnet_traces_without_graph_breaks():
    """Dynamo and AOT autograd (what finds graph breaks and runs the ops'
    fake implementations and derivative formulas); ~45 s on 2 busy cores."""
    compiled_resnet_matches_eager("aot_eager")


@pytest.mark.slow
def test_compiled_patched_resnet_with_inductor():
    """Inductor's code generation around our ops (1-2 minutes of
    compilation on 2 busy cores: slow)."""
    compiled_resnet_matches_eager("inductor")
