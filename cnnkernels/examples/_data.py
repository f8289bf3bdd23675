"""Synthetic data the examples (and the models' training tests) draw: no
download, reproducible from a generator."""

import math

import torch

# Class k of the shapes task: its name and its base colour (RGB).
SHAPES = (("square", (0.9, 0.25, 0.2)), ("disc", (0.2, 0.8, 0.3)), ("triangle", (0.25, 0.4, 0.95)))


def shapes(count: int, size: int = 64, max_objects: int = 3, *,
           generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``count`` RGB images (count, 3, size, size) in [0, 1] of 1..max_objects
    squares, discs and triangles (sides size/8..size/3) on a noisy grey
    background; per image the boxes (M, 4) xyxy in pixels (the shape's
    extent) and labels (M,) indices into ``SHAPES``. Later shapes may cover
    earlier ones partly."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images = 0.45 + 0.08 * torch.randn(count, 3, size, size, generator=generator)
    boxes, labels = [], []
    for image in images:
        objects = int(torch.randint(1, max_objects + 1, (), generator=generator))
        image_boxes, image_labels = [], []
        for _ in range(objects):
            label = int(torch.randint(len(SHAPES), (), generator=generator))
            side = float(torch.empty(()).uniform_(size / 8, size / 3, generator=generator))
            x0 = float(torch.empty(()).uniform_(0, size - side, generator=generator))
            y0 = float(torch.empty(()).uniform_(0, size - side, generator=generator))
            u, v = (x - x0) / side, (y - y0) / side
            inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
            if SHAPES[label][0] == "disc":
                inside &= (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
            elif SHAPES[label][0] == "triangle":
                inside &= (u - 0.5).abs() <= v / 2
            colour = torch.tensor(SHAPES[label][1]) * (0.8 + 0.4 * torch.rand(
                (), generator=generator))
            image[:, inside] = colour.clamp(0, 1).unsqueeze(1)
            image_boxes.append((x0, y0, x0 + side, y0 + side))
            image_labels.append(label)
        boxes.append(torch.tensor(image_boxes))
        labels.append(torch.tensor(image_labels))
    return images.clamp(0, 1), boxes, labels


def identity_prototypes(identities: int, size: int = 32, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(identities, 3, size, size) "faces": each a sum of six coloured
    Gaussian blobs at its own positions, the identity a view varies."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    blobs = torch.rand(identities, 6, 7, generator=generator)
    centres_x, centres_y = blobs[..., 0, None, None], blobs[..., 1, None, None]
    widths = 0.08 + 0.15 * blobs[..., 2, None, None]
    weight = torch.exp(-((x - centres_x) ** 2 + (y - centres_y) ** 2) / (2 * widths ** 2))
    colours = blobs[..., 3:6] * 2 - 1
    return 0.5 + 0.5 * torch.tanh(torch.einsum("ibhw,ibc->ichw", weight, colours))


def identity_views(prototypes: torch.Tensor, identity: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One view of ``prototypes[identity]`` per entry of ``identity``: a
    random shift of up to 1/10 of the side, brightness and contrast jitter
    and pixel noise (what changes between two photographs)."""
    size = prototypes.shape[-1]
    views = prototypes[identity].clone()
    limit = max(1, size // 10)
    shifts = torch.randint(-limit, limit + 1, (len(identity), 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        views[i] = torch.roll(views[i], shifts=(dy, dx), dims=(1, 2))
    contrast = 0.8 + 0.4 * torch.rand(len(identity), 1, 1, 1, generator=generator)
    brightness = 0.1 * torch.randn(len(identity), 1, 1, 1, generator=generator)
    noise = 0.05 * torch.randn(views.shape, generator=generator)
    return ((views - 0.5) * contrast + 0.5 + brightness + noise).clamp(0, 1)


def segmentation(count: int, size: int = 64, *, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (count, 1, size, size), masks (count, size, size) int64):
    bright discs and rings on a noisy background, the mask 1 inside them."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images = 0.3 + 0.1 * torch.randn(count, 1, size, size, generator=generator)
    masks = torch.zeros(count, size, size, dtype=torch.int64)
    for image, mask in zip(images, masks, strict=True):
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            cx, cy = (torch.rand(2, generator=generator) * size).tolist()
            radius = float(torch.empty(()).uniform_(size / 12, size / 5, generator=generator))
            distance = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            inside = distance <= radius
            if torch.rand((), generator=generator) < 0.5:
                inside &= distance >= radius * 0.5
            image[0, inside] += 0.4 + 0.1 * math.sqrt(radius / size)
            mask[inside] = 1
    return images.clamp(0, 1), masks
