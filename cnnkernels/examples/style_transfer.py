"""The course's neural style transfer (notes, 4.1): optimise an image G so
that J(G) = alpha J_content(C, G) + beta sum_l lambda_l J_style^l(S, G),
with VGG-16 features, ``cnnkernels.content_loss`` (sum (a_C - a_G)^2 /
(2 n_H n_W n_C)) at relu4_2 and ``cnnkernels.style_loss`` (the notes'
(2 n_H n_W n_C)^-2 sum (G^S - G^G)^2 over Gram matrices) at relu1_1,
relu2_1, relu3_1 and relu4_1; every convolution, pooling, Gram and loss on
cnnkernels. Writes ``style_transfer.png`` (content | style | result) and
``style_transfer_loss.png``.

The content and style images are drawn by this script (a landscape and a
swirl of brush strokes) unless ``--content``/``--style`` name image files.
No weights are downloaded: ``--weights`` takes torchvision's VGG-16
state dict (``vgg16-397923af.pth``; cnnkernels' vgg16 has the same keys).
Without it the features are those of a randomly initialised VGG-16, which
still carry colour and local texture statistics (random-network texture
synthesis) but less of the painterly structure trained features give.

    python -m cnnkernels.examples.style_transfer [--size 128] [--steps 300]
"""

import math

import torch

import cnnkernels as ck
from cnnkernels.examples import _common
from cnnkernels.models import vgg16

# torchvision's vgg16().features indices of the ReLU outputs used.
STYLE_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 18}
CONTENT_LAYER = ("relu4_2", 20)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def landscape(size: int) -> torch.Tensor:
    """A (3, size, size) image in [0, 1]: sky, sun, two mountain ranges, a lake."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.95 - 0.1 * y])
    sun = ((x - 0.72) ** 2 + (y - 0.22) ** 2) < 0.01
    image[:, sun] = torch.tensor([1.0, 0.85, 0.3]).unsqueeze(1)
    far = y > 0.55 - 0.18 * torch.sin(3.1 * x + 0.4).abs()
    image[:, far] = torch.tensor([0.35, 0.4, 0.55]).unsqueeze(1)
    near = y > 0.7 - 0.12 * torch.sin(5 * x + 1.5)
    image[:, near] = torch.tensor([0.2, 0.45, 0.2]).unsqueeze(1)
    lake = (y > 0.8) & ((x - 0.35) ** 2 / 0.06 + (y - 0.9) ** 2 / 0.006 < 1)
    image[:, lake] = torch.tensor([0.25, 0.5, 0.8]).unsqueeze(1)
    return image


def brush_strokes(size: int, seed: int) -> torch.Tensor:
    """A (3, size, size) image in [0, 1]: swirling strokes in a night palette."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    field = torch.zeros(size, size)
    for _ in range(12):
        cx, cy, frequency, phase = torch.rand(4, generator=generator).tolist()
        radius = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        angle = torch.atan2(y - cy, x - cx)
        field += torch.sin(40 * (1 + frequency) * radius + 3 * angle + 6.3 * phase)
    stripes = 0.5 + 0.5 * torch.tanh(1.5 * field / math.sqrt(12))
    palette = torch.tensor([[0.05, 0.1, 0.35], [0.15, 0.35, 0.7], [0.95, 0.85, 0.3]])
    low, high = stripes.clamp(0, 0.5) * 2, (stripes - 0.5).clamp(0, 0.5) * 2
    image = (palette[0, :, None, None] * (1 - low) + palette[1, :, None, None] * low) * \
        (1 - high) + palette[2, :, None, None] * high
    return image.clamp(0, 1)


def load_image(path: str, size: int) -> torch.Tensor:
    """An image file as (3, size, size) in [0, 1] (matplotlib reads PNG; Pillow the rest)."""
    pixels = torch.as_tensor(_common.pyplot().imread(path)).float()
    if pixels.max() > 1:
        pixels = pixels / 255
    pixels = pixels[..., :3].permute(2, 0, 1) if pixels.dim() == 3 else pixels.expand(3, -1, -1)
    return torch.nn.functional.interpolate(pixels[None], size=(size, size), mode="bilinear",
                                           align_corners=False)[0].clamp(0, 1)


class Features(torch.nn.Module):
    """VGG-16's convolutional trunk up to relu4_2, returning the named activations."""

    def __init__(self, weights: str | None):
        super().__init__()
        network = vgg16()
        if weights is not None:
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.trunk = network.features[:CONTENT_LAYER[1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = {index: name for name, index in (*STYLE_LAYERS.items(), CONTENT_LAYER)}
        activations, x = {}, (image - self.mean) / self.std
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if index in wanted:
                activations[wanted[index]] = x
        return activations


def main(argv=None) -> dict:
    cli = _common.parser(__doc__.split("\n\n")[0], steps=300)
    cli.add_argument("--size", type=int, default=128, help="image side in pixels")
    cli.add_argument("--content", help="content image file (default: a drawn landscape)")
    cli.add_argument("--style", help="style image file (default: drawn brush strokes)")
    cli.add_argument("--weights", help="torchvision VGG-16 state dict file")
    cli.add_argument("--alpha", type=float, default=1.0, help="content weight")
    cli.add_argument("--beta", type=float, default=1e4, help="style weight")
    args = cli.parse_args(argv)
    torch.manual_seed(args.seed)
    content = load_image(args.content, args.size) if args.content else landscape(args.size)
    style = load_image(args.style, args.size) if args.style else brush_strokes(args.size,
                                                                                args.seed)
    content, style = content[None].to(args.device), style[None].to(args.device)
    features = Features(args.weights).to(args.device)
    losses = []
    with ck.use(backend=args.backend):
        with torch.no_grad():
            content_target = features(content)[CONTENT_LAYER[0]]
            style_targets = {name: ck.gram_matrix(a) for name, a in features(style).items()
                             if name in STYLE_LAYERS}
        generated = (content + 0.05 * torch.randn_like(content)).clamp(0, 1).requires_grad_()
        optimizer = torch.optim.Adam([generated], lr=0.02)
        for _ in (bar := _common.progress(args.steps, "style transfer")):
            activations = features(generated)
            content_cost = ck.content_loss(content_target, activations[CONTENT_LAYER[0]])
            style_cost = sum(ck.style_loss(activations[name], target) / len(style_targets)
                             for name, target in style_targets.items())
            total = args.alpha * content_cost + args.beta * style_cost
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            with torch.no_grad():
                generated.clamp_(0, 1)
            losses.append((content_cost.item(), style_cost.item(), total.item()))
            bar.set_postfix(content=f"{losses[-1][0]:.3g}", style=f"{losses[-1][1]:.3g}")

    plt = _common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    titles = ("content C", "style S", f"generated G ({args.steps} steps)")
    for axis, image, title in zip(axes, (content, style, generated.detach()), titles, strict=True):
        axis.imshow(image[0].permute(1, 2, 0).cpu().numpy())
        axis.set_title(title)
        axis.axis("off")
    _common.save(figure, args.out, "style_transfer.png")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for column, label in enumerate(("alpha J_content", "beta J_style", "J")):
        scale = (args.alpha, args.beta, 1.0)[column]
        axis.plot([scale * row[column] for row in losses], label=label)
    axis.set(xlabel="step", ylabel="cost", yscale="log", title="style transfer cost")
    axis.legend()
    _common.save(figure, args.out, "style_transfer_loss.png")
    return {"losses": losses, "image": generated.detach()}


if __name__ == "__main__":
    main()
