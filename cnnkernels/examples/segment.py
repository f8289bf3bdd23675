"""Semantic segmentation with the course's U-Net (encoder, transposed-
convolution up-sampling without zero insertion, skip concatenations) on
synthetic images of discs and rings: per-pixel cross-entropy, then the
predicted masks of held-out images. Writes ``segment.png`` (image, true
mask, predicted mask) and ``segment_loss.png`` (loss and IoU).

    python -m cnnkernels.examples.segment [--steps 200] [--out DIR]
"""

import torch
import torch.nn.functional as F

import cnnkernels as ck
from cnnkernels.examples import _common, _data
from cnnkernels.models import unet


def foreground_iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    predicted = logits.argmax(1) == 1
    truth = masks == 1
    return float((predicted & truth).sum() / (predicted | truth).sum().clamp_min(1))


def main(argv=None) -> dict:
    cli = _common.parser(__doc__.split("\n\n")[0], steps=200)
    cli.add_argument("--size", type=int, default=64, help="image side (a multiple of 8)")
    args = cli.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = unet(in_channels=1, num_classes=2, base_channels=8, depth=3).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, ious = [], []
    with ck.use(backend=args.backend):
        for _ in (bar := _common.progress(args.steps, "U-Net")):
            images, masks = _data.segmentation(8, args.size, generator=generator)
            logits = model(images.to(args.device))
            loss = F.cross_entropy(logits, masks.to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            ious.append(foreground_iou(logits.detach(), masks.to(args.device)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", iou=f"{ious[-1]:.3f}")
        model.eval()
        images, masks = _data.segmentation(4, args.size, generator=generator)
        with torch.no_grad():
            logits = model(images.to(args.device)).cpu()
    held_out = foreground_iou(logits, masks)
    print(f"held-out foreground IoU after {args.steps} steps: {held_out:.3f}")

    plt = _common.pyplot()
    figure, axes = plt.subplots(3, 4, figsize=(8, 6.2))
    for column in range(4):
        panels = (images[column, 0], masks[column], logits[column].argmax(0))
        for row, (panel, title) in enumerate(zip(panels, ("image", "true mask", "predicted"),
                                                 strict=True)):
            axes[row, column].imshow(panel.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_title(title, fontsize=9)
            axes[row, column].axis("off")
    figure.suptitle(f"U-Net on held-out images (foreground IoU {held_out:.3f})")
    _common.save(figure, args.out, "segment.png")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(losses, linewidth=0.8, label="cross-entropy")
    axis.plot(ious, linewidth=0.8, label="foreground IoU")
    axis.set(xlabel="step", title="U-Net training")
    axis.legend()
    _common.save(figure, args.out, "segment_loss.png")
    return {"losses": losses, "iou": held_out}


if __name__ == "__main__":
    main()
