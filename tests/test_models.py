"""cnnkernels.models: parameter counts and state_dict keys as torchvision's
(derived here from its source, and its documented counts), LeNet-5 as the
course notes' table, every model equal to the same model on plain torch
ops with the same weights (forward and backward), and tiny training runs
that learn."""

import copy
import functools
import itertools
import math

import pytest
import torch
from torch.nn import functional as F

import cnnkernels as ck
from cnnkernels import models
from cnnkernels.examples import _data


@pytest.fixture(autouse=True)
def one_thread():
    """These models' layers are small: OpenMP's fork and barrier per op
    cost more than a second thread saves (far more on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _built(builder: str, kwargs: tuple) -> torch.nn.Module:
    return getattr(models, builder)(**dict(kwargs))


def built(builder: str, **kwargs) -> torch.nn.Module:
    """One instance per configuration for the tests that only read it
    (building GoogLeNet's truncated-normal weights takes seconds)."""
    return _built(builder, tuple(sorted(kwargs.items())))


# --- torchvision's documented parameter counts -----------------------------

@pytest.mark.parametrize(("builder", "kwargs", "count"), [
    ("alexnet", {}, 61_100_840),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    # torchvision documents the count without the auxiliary heads (its
    # weights drop them); its builder without weights keeps them.
    ("googlenet", {"aux_logits": False}, 6_624_904),
    ("mobilenet_v2", {}, 3_504_872),
    pytest.param("vgg16", {}, 138_357_544, marks=pytest.mark.slow),
])
def test_parameter_count_is_torchvisions(builder, kwargs, count):
    assert parameter_count(built(builder, **kwargs)) == count


def test_googlenet_defaults_keep_the_auxiliary_heads():
    """torchvision's googlenet() without weights: aux_logits=True, two heads
    of a 1x1 convolution to 128 channels (+ batch norm) and 2048 -> 1024 ->
    1000 linear layers, on 512 and 528 channels."""
    model = copy.deepcopy(built("googlenet"))
    head = 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert parameter_count(model) == 6_624_904 + 512 * 128 + 528 * 128 + 2 * head
    model.train()
    outputs = model(torch.randn(2, 3, 32, 32))
    assert isinstance(outputs, models.GoogLeNetOutputs)
    assert [o.shape for o in outputs] == [(2, 1000)] * 3
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_mobilenet_v1_is_the_papers_224_layout():
    """Howard et al.'s Table 1 at width 1: 4.2 M parameters, 4,231,976
    trainable in Keras' MobileNet (conv layers without bias, batch norm's
    scale and shift, a 1024 -> 1000 classifier); 7 x 7 x 1024 before the
    pool on 224 x 224."""
    model = models.mobilenet_v1()
    assert parameter_count(model) == 4_231_976
    with torch.no_grad():
        assert model.eval().features(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)
    half = models.mobilenet_v1(num_classes=10, width_mult=0.5)
    assert half.classifier[1].in_features == 512


@pytest.mark.parametrize(("kwargs", "count"), [
    ({"groups": 32, "width_per_group": 4}, 25_028_904),   # torchvision's resnext50_32x4d
    ({"width_per_group": 128}, 68_883_240),               # and wide_resnet50_2
])
def test_resnet50_variants_have_torchvisions_counts(kwargs, count):
    assert parameter_count(models.resnet50(**kwargs)) == count


def test_resnet_options():
    """Dilation instead of the last two strides keeps 1/8 of the input size
    (torchvision's segmentation backbones); zero_init_residual zeroes each
    block's last batch-norm scale."""
    model = models.resnet50(num_classes=3, replace_stride_with_dilation=[False, True, True])
    shapes = []
    model.layer4.register_forward_hook(lambda _, __, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert shapes == [(1, 2048, 8, 8)]
    model = models.resnet18(zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, models.resnet.BasicBlock)]
    assert len(blocks) == 8 and all(bool((b.bn2.weight == 0).all()) for b in blocks)
    assert all(bool((b.bn1.weight == 1).all()) for b in blocks)


def test_googlenet_transform_input():
    """transform_input maps ImageNet normalisation to the ported weights'
    (x - 0.5) / 0.5 scaling before the first convolution."""
    model = copy.deepcopy(built("googlenet", aux_logits=False)).eval()
    x = torch.randn(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((x * std + mean - 0.5) / 0.5)
        model.transform_input = True
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


# --- LeNet-5: the notes' table ---------------------------------------------

def test_lenet5_follows_the_notes_table():
    model = models.lenet5()
    per_layer = {name: parameter_count(child) for name, child in model.named_children()}
    assert per_layer == {"conv1": 456, "pool1": 0, "conv2": 2_416, "pool2": 0, "fc3": 48_120,
                         "fc4": 10_164, "fc5": 850, "activation": 0}
    assert isinstance(model.pool1, torch.nn.AvgPool2d)
    shapes = {}
    for name in ("conv1", "pool1", "conv2", "pool2", "fc3", "fc4", "fc5"):
        getattr(model, name).register_forward_hook(
            lambda _, __, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
    model(torch.randn(2, 3, 32, 32))
    assert shapes == {"conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 10, 10),
                      "pool2": (16, 5, 5), "fc3": (120,), "fc4": (84,), "fc5": (10,)}
    with pytest.raises(ValueError, match=r"input must be \(N, 3, 32, 32\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="activation must be one of"):
        models.lenet5(activation="gelu")


def test_unet_widths_and_output_size():
    """Ronneberger et al.'s widths (64 -> 1024), 3x3 convolutions with bias,
    2x2 transposed convolutions halving the channels, a 1x1 head; padded
    convolutions, so the output has the input's size."""
    def conv(c_in, c_out, k):
        return c_in * c_out * k * k + c_out

    widths = [64, 128, 256, 512, 1024]
    expected = conv(1, 64, 3) + conv(64, 64, 3) + conv(64, 2, 1)
    for lower, upper in itertools.pairwise(widths):
        expected += conv(lower, upper, 3) + conv(upper, upper, 3)     # encoder
        expected += conv(upper, lower, 2)                              # up-sampling
        expected += conv(2 * lower, lower, 3) + conv(lower, lower, 3)  # decoder
    assert parameter_count(models.unet()) == expected
    small = models.unet(in_channels=3, num_classes=5, base_channels=4, depth=3)
    assert small(torch.randn(1, 3, 16, 24)).shape == (1, 5, 16, 24)


def test_empty_batch():
    with torch.no_grad():
        assert models.lenet5().eval()(torch.randn(0, 3, 32, 32)).shape == (0, 10)
        assert models.unet(base_channels=2, depth=2).eval()(torch.randn(0, 1, 8, 8)).shape == \
            (0, 2, 8, 8)
        count, boxes, scores, classes = models.yolo(base_channels=2).eval().detect(
            torch.randn(0, 3, 64, 64), max_detections=7)
    assert (count.shape, boxes.shape, scores.shape, classes.shape) == \
        ((0,), (0, 7, 4), (0, 7), (0, 7))


# --- state_dict keys derived from torchvision's source ---------------------

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def resnet_keys(blocks, bottleneck: bool) -> set[str]:
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{k}" for k in BN}
    convs = 3 if bottleneck else 2
    for stage, n in enumerate(blocks, 1):
        for b in range(n):
            prefix = f"layer{stage}.{b}"
            for i in range(1, convs + 1):
                keys |= {f"{prefix}.conv{i}.weight"} | {f"{prefix}.bn{i}.{k}" for k in BN}
            # A projection where the stride or the width changes: every
            # stage's first block, except layer1 of the BasicBlock nets.
            if b == 0 and (stage > 1 or bottleneck):
                keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{k}"
                                                             for k in BN}
    return keys


def mobilenet_v2_keys() -> set[str]:
    def cna(prefix):
        return {f"{prefix}.0.weight"} | {f"{prefix}.1.{k}" for k in BN}

    keys = cna("features.0") | cna("features.18") | {"classifier.1.weight", "classifier.1.bias"}
    keys |= cna("features.1.conv.0") | {"features.1.conv.1.weight"} | \
        {f"features.1.conv.2.{k}" for k in BN}
    for i in range(2, 18):
        keys |= cna(f"features.{i}.conv.0") | cna(f"features.{i}.conv.1") | \
            {f"features.{i}.conv.2.weight"} | {f"features.{i}.conv.3.{k}" for k in BN}
    return keys


def googlenet_keys(aux_logits: bool) -> set[str]:
    def basic(prefix):
        return {f"{prefix}.conv.weight"} | {f"{prefix}.bn.{k}" for k in BN}

    keys = basic("conv1") | basic("conv2") | basic("conv3") | {"fc.weight", "fc.bias"}
    for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        p = f"inception{name}"
        keys |= basic(f"{p}.branch1") | basic(f"{p}.branch2.0") | basic(f"{p}.branch2.1") | \
            basic(f"{p}.branch3.0") | basic(f"{p}.branch3.1") | basic(f"{p}.branch4.1")
    if aux_logits:
        for aux in ("aux1", "aux2"):
            keys |= basic(f"{aux}.conv") | {f"{aux}.fc{i}.{k}" for i in (1, 2)
                                            for k in ("weight", "bias")}
    return keys


def linear_keys(prefix, indices) -> set[str]:
    return {f"{prefix}.{i}.{k}" for i in indices for k in ("weight", "bias")}


@pytest.mark.parametrize(("builder", "kwargs", "expected"), [
    ("resnet18", {}, resnet_keys([2, 2, 2, 2], False)),
    ("resnet34", {}, resnet_keys([3, 4, 6, 3], False)),
    ("resnet50", {}, resnet_keys([3, 4, 6, 3], True)),
    ("mobilenet_v2", {}, mobilenet_v2_keys()),
    ("googlenet", {}, googlenet_keys(True)),
    ("googlenet", {"aux_logits": False}, googlenet_keys(False)),
    ("alexnet", {}, linear_keys("features", (0, 3, 6, 8, 10)) |
     linear_keys("classifier", (1, 4, 6))),
    pytest.param("vgg16", {}, linear_keys("features", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24,
                                                       26, 28)) |
                 linear_keys("classifier", (0, 3, 6)), marks=pytest.mark.slow),
])
def test_state_dict_keys_are_torchvisions(builder, kwargs, expected):
    keys = built(builder, **kwargs).state_dict().keys()
    assert set(keys) == expected
    assert len(keys) == len(expected)


def test_state_dict_spot_checks():
    """Keys and shapes quoted from torchvision's weights files."""
    sd = built("resnet50").state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert sd["fc.bias"].shape == (1000,)
    assert built("resnet18").state_dict()["layer2.0.downsample.0.weight"].shape == \
        (128, 64, 1, 1)
    assert built("mobilenet_v2").state_dict()["features.18.1.weight"].shape == (1280,)
    assert built("googlenet").state_dict()["inception3a.branch2.1.conv.weight"].shape == \
        (128, 96, 3, 3)


def test_torchvision_state_dict_round_trip():
    """A state dict of one instance loads strictly into another (the path a
    torchvision weights file takes) and gives the same outputs."""
    torch.manual_seed(0)
    source, target = models.resnet18(num_classes=7).eval(), models.resnet18(num_classes=7).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="weights must be None"):
        models.resnet18(weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        models.mobilenet_v2(num_classes=0)
    with pytest.raises(ValueError, match="width_mult must be a positive number"):
        models.mobilenet_v2(width_mult=-1)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\]"):
        models.alexnet(dropout=1.5)
    with pytest.raises(ValueError, match="anchors must be"):
        models.yolo(anchors=((10, 0),))
    with pytest.raises(ValueError, match="image_size / grid must be a power of two"):
        models.yolo(grid=5, image_size=64)
    with pytest.raises(ValueError, match="multiples of 2\\^depth = 4"):
        models.unet(base_channels=2, depth=2)(torch.randn(1, 1, 10, 12))


# --- the same model on plain torch ops --------------------------------------

def torch_twin(model: torch.nn.Module) -> torch.nn.Module:
    twin = models.plain_torch_copy(model)
    assert not any(type(m).__module__ == "cnnkernels.nn" for m in twin.modules())
    assert twin.state_dict().keys() == model.state_dict().keys()
    return twin


def test_plain_torch_copy_refuses_what_it_cannot_express():
    model = torch.nn.Sequential(ck.nn.ConvTranspose2d(2, 2, 2, activation="relu"))
    with pytest.raises(NotImplementedError, match="ConvTranspose2d with a fused activation"):
        models.plain_torch_copy(model)


def outputs_of(result) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else [t for t in result if t is not None]


# Norm-wise relative tolerance of a whole model against its twin: rounding
# differences of single ops (~1e-16 in float64, ~1e-7 in float32) grow
# through the depth; a wrong kernel shows as an O(1) error. Training-mode
# batch norm over few values per channel amplifies them without bound (two
# values: (a - b) / |a - b|), so the ImageNet models get 64 x 64 inputs,
# 2 x 2 maps at the end (ResNet-50 in float64: 6e-13 here, 2e-6 on 32 x 32).
MODEL_RTOL = {torch.float64: 1e-10, torch.float32: 1e-3}


def assert_model_close(actual, expected, dtype, what: str, floor: float = 0.0) -> None:
    """max |actual - expected| <= MODEL_RTOL * max(max |expected|, floor),
    shapes equal, actual finite."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    error = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0
    scale = max(expected.abs().max().item() if actual.numel() else 0, floor)
    assert error <= MODEL_RTOL[dtype] * max(scale, 1e-30), (
        f"{what}: max abs error {error:.3e} > {MODEL_RTOL[dtype]:.0e} * max|ref| {scale:.3e}")


def check_against_torch_twin(model, x, dtype, backend="cpu", backward=True):
    """Forward in training mode (batch statistics, the same dropout masks
    from the same seed) and backward of a random projection of the outputs:
    outputs, input gradient and every parameter gradient within
    MODEL_RTOL of the twin's."""
    model = model.to(dtype).train()
    twin = torch_twin(model)
    x = x.to(dtype)
    results = []
    for net, net_backend in ((model, backend), (twin, "cpu")):
        x_ = x.clone().requires_grad_(backward)
        torch.manual_seed(1234)
        with ck.use(backend=net_backend):
            out = outputs_of(net(x_))
            if backward:
                generator = torch.Generator().manual_seed(99)
                weights = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(dtype)
                           for o in out]
                sum((o * w).sum() for o, w in zip(out, weights, strict=True)).backward()
        results.append((out, x_.grad, {n: p.grad for n, p in net.named_parameters()}))
    (out, grad_x, grads), (ref_out, ref_grad_x, ref_grads) = results
    for i, (o, r) in enumerate(zip(out, ref_out, strict=True)):
        assert_model_close(o, r, dtype, f"output {i}")
    if not backward:
        return
    assert_model_close(grad_x, ref_grad_x, dtype, "input gradient")
    assert grads.keys() == ref_grads.keys()
    # Some gradients are zero but for rounding (a bias before a training-mode
    # batch norm, which subtracts it again): their errors count against a
    # thousandth of the largest gradient.
    floor = 1e-3 * max(g.abs().max().item() for g in ref_grads.values())
    for name, g in grads.items():
        assert_model_close(g, ref_grads[name], dtype, f"gradient of {name}", floor)


@pytest.mark.parametrize(("builder", "kwargs", "shape"), [
    ("lenet5", {}, (2, 3, 32, 32)),
    ("lenet5", {"activation": "relu", "in_channels": 1}, (2, 1, 32, 32)),
    ("resnet18", {"num_classes": 10}, (2, 3, 64, 64)),
    ("resnet50", {"num_classes": 10}, (2, 3, 64, 64)),
    ("googlenet", {"num_classes": 10}, (2, 3, 64, 64)),
    ("mobilenet_v1", {"num_classes": 10}, (2, 3, 64, 64)),
    ("mobilenet_v2", {"num_classes": 10}, (2, 3, 64, 64)),
    ("unet", {"base_channels": 4, "depth": 3}, (2, 1, 16, 24)),
    ("facenet_embedding", {"embedding_dim": 16}, (2, 3, 32, 32)),
    ("yolo", {"base_channels": 4}, (2, 3, 64, 64)),
])
def test_model_equals_its_plain_torch_twin(builder, kwargs, shape):
    torch.manual_seed(0)
    model = getattr(models, builder)(**kwargs)
    check_against_torch_twin(model, torch.randn(shape), torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(("builder", "kwargs", "shape"), [
    ("alexnet", {"num_classes": 10}, (2, 3, 64, 64)),
    ("vgg16", {"num_classes": 10}, (2, 3, 32, 32)),
    ("resnet34", {"num_classes": 10}, (2, 3, 64, 64)),
])
def test_big_model_equals_its_plain_torch_twin(builder, kwargs, shape):
    """float32 (float64 copies of these would need gigabytes)."""
    torch.manual_seed(0)
    model = getattr(models, builder)(**kwargs)
    check_against_torch_twin(model, torch.randn(shape), torch.float32)


# The Triton interpreter runs every program instance in numpy: LeNet-5 at
# batch 1 takes seconds forward and about a minute backward (direct
# convolutions, the interpreter's fastest; its implicit GEMM is slower).
@pytest.mark.parametrize("backward", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_lenet5_on_the_triton_interpreter_equals_torch(backward):
    torch.manual_seed(0)
    with ck.use(conv_algorithm="direct"):
        check_against_torch_twin(models.lenet5(activation="relu"), torch.randn(1, 3, 32, 32),
                                 torch.float32, backend="triton", backward=backward)


# --- tiny training runs learn ----------------------------------------------

def train(model, batches, loss_of, steps: int, lr: float) -> tuple[float, float]:
    """Adam for ``steps`` steps over ``batches`` (cycled); the mean loss of
    the first and the last five steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    with ck.use(backend="cpu"):
        for step in range(steps):
            optimizer.zero_grad()
            loss = loss_of(model, *batches[step % len(batches)])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def test_lenet5_learns_digits():
    """scikit-learn's bundled 8 x 8 digits (no download), up-sampled to
    32 x 32, grey (in_channels=1)."""
    datasets = pytest.importorskip("sklearn.datasets")
    torch.manual_seed(0)
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels))
    train_idx, test_idx = order[:1500], order[1500:]
    batches = [(images[i], labels[i]) for i in train_idx.split(50)]
    model = models.lenet5(in_channels=1)

    def loss_of(net, x, y):
        return F.cross_entropy(net(x), y)

    first, last = train(model, batches, loss_of, steps=100, lr=3e-3)
    assert last < first / 5, (first, last)
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean()
    assert accuracy > 0.85


def test_unet_learns_synthetic_segmentation():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batches = [_data.segmentation(8, 32, generator=generator) for _ in range(8)]
    model = models.unet(in_channels=1, num_classes=2, base_channels=8, depth=2)

    def loss_of(net, x, y):
        return F.cross_entropy(net(x), y)

    first, last = train(model, batches, loss_of, steps=60, lr=1e-2)
    assert last < first / 4, (first, last)


def test_yolo_learns_synthetic_shapes_and_detects():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batches = [_data.shapes(16, 64, max_objects=2, generator=generator) for _ in range(4)]
    model = models.yolo(num_classes=3, base_channels=8)

    def loss_of(net, x, boxes, labels):
        return net.loss(net(x), boxes, labels)

    first, last = train(model, batches, loss_of, steps=80, lr=1e-2)
    assert last < first / 4, (first, last)

    model.eval()
    images, boxes, labels = batches[0]
    with ck.use(backend="cpu"):
        count, found, _, classes = model.detect(images[:4], score_threshold=0.3,
                                                     iou_threshold=0.5, max_detections=5)
    assert count.shape == (4,) and found.shape == (4, 5, 4) and classes.shape == (4, 5)
    # The best detection of each image overlaps one of its boxes, with its
    # class.
    for i in range(4):
        assert count[i] >= 1
        iou = ck.box_iou(found[i, :1], boxes[i])[0]
        assert iou.max() > 0.3
        assert classes[i, 0] == labels[i][iou.argmax()]


def test_yolo_loss_terms():
    """One box, responsible prediction exactly on target: only the
    no-object and class terms of the other predictions remain."""
    model = models.yolo(num_classes=2, anchors=((16.0, 32.0), (32.0, 16.0)), grid=4,
                        image_size=32)
    head = torch.zeros(1, 4, 4, 2 * 7, dtype=torch.float64)
    box = torch.tensor([[0.0, 6.0, 24.0, 14.0]], dtype=torch.float64)  # centre (12, 10), 24 x 8
    # Cell x = 1, y = 1 (stride 8); shape IoUs 0.22 with the tall anchor,
    # 0.375 with the wide one (32 x 16), which is responsible.
    target = head.view(1, 4, 4, 2, 7)[0, 1, 1, 1]
    target[0] = math.log(0.5 / 0.5)          # sigmoid(t_x) = 12 / 8 - 1 = 0.5
    target[1] = math.log(0.25 / 0.75)        # sigmoid(t_y) = 10 / 8 - 1 = 0.25
    target[2:4] = torch.tensor([math.log(24 / 32), math.log(8 / 16)], dtype=torch.float64)
    target[4] = 50.0                         # objectness ~1
    target[5:] = torch.tensor([-50.0, 50.0], dtype=torch.float64)  # class 1
    loss = model.loss(head, [box], [torch.tensor([1])])
    no_object = 0.5 * 31 * math.log(2)      # BCE(0, 0) over the other 31 predictions
    assert loss.item() == pytest.approx(no_object, rel=1e-9)
    empty = model.loss(torch.zeros(0, 4, 4, 14), [], [])
    assert empty.item() == 0


def test_facenet_embedding_learns_identities_with_the_triplet_loss():
    """cnnkernels' triplet_margin_loss with the notes' squared distance."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    identity = torch.arange(8).repeat_interleave(8)
    pictures = _data.identity_views(_data.identity_prototypes(8, 32, generator=generator),
                                    identity, generator=generator)
    batches = []
    for _ in range(10):
        anchor = torch.randint(0, len(pictures), (32,), generator=generator)
        positive = identity[anchor] * 8 + torch.randint(0, 8, (32,), generator=generator)
        other = (identity[anchor] + torch.randint(1, 8, (32,), generator=generator)) % 8
        negative = other * 8 + torch.randint(0, 8, (32,), generator=generator)
        batches.append((pictures[anchor], pictures[positive], pictures[negative]))
    model = models.facenet_embedding(embedding_dim=16, base_channels=8, stages=3)

    def loss_of(net, a, p, n):
        return ck.triplet_margin_loss(net(a), net(p), net(n), margin=0.5,
                                      distance="sqeuclidean")

    first, last = train(model, batches, loss_of, steps=40, lr=3e-3)
    assert last < first / 4, (first, last)
    model.eval()
    with torch.no_grad():
        same = model.distance(pictures[0:8:2], pictures[1:8:2])
        different = model.distance(pictures[0:8:2], pictures[8:16:2])
    assert same.max() < different.min()
