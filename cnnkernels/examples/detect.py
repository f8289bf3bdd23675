"""A YOLO-style grid detector (the course's S x S x A x (5 + C) head with
anchor boxes) trained on synthetic shapes, then run on new images: the
head decoded and non-max suppressed per class into padded detections, on
the device without a host synchronisation (``cnnkernels.yolo_detect``:
decode + ``batched_nms_padded``). Writes ``detect.png`` (detections drawn
on held-out images, ground truth dashed) and ``detect_loss.png``.

    python -m cnnkernels.examples.detect [--steps 400] [--out DIR]
"""

import torch

import cnnkernels as ck
from cnnkernels.examples import _common, _data
from cnnkernels.models import yolo


def main(argv=None) -> dict:
    cli = _common.parser(__doc__.split("\n\n")[0], steps=400)
    cli.add_argument("--score-threshold", type=float, default=0.4)
    cli.add_argument("--iou-threshold", type=float, default=0.5)
    args = cli.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = yolo(num_classes=len(_data.SHAPES), grid=8, image_size=64).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    with ck.use(backend=args.backend):
        for _ in (bar := _common.progress(args.steps, "YOLO")):
            images, boxes, labels = _data.shapes(16, 64, generator=generator)
            head = model(images.to(args.device))
            loss = model.loss(head, [b.to(args.device) for b in boxes],
                              [lab.to(args.device) for lab in labels])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        images, boxes, labels = _data.shapes(8, 64, generator=generator)
        count, found, scores, classes = model.detect(images.to(args.device), args.score_threshold,
                                                     args.iou_threshold, max_detections=10)

    plt = _common.pyplot()
    patches = __import__("matplotlib.patches", fromlist=["Rectangle"])
    figure, axes = plt.subplots(2, 4, figsize=(10, 5.4))
    for i, axis in enumerate(axes.flat):
        axis.imshow(images[i].permute(1, 2, 0).numpy())
        for x0, y0, x1, y1 in boxes[i].tolist():
            axis.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                             edgecolor="white", linestyle="--", linewidth=0.8))
        for k in range(int(count[i])):
            x0, y0, x1, y1 = found[i, k].tolist()
            name, colour = _data.SHAPES[int(classes[i, k])]
            axis.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                             edgecolor="black", linewidth=1.6))
            axis.text(x0, y0 - 1, f"{name} {float(scores[i, k]):.2f}", fontsize=7,
                      color="black", backgroundcolor=(*colour, 0.6))
        axis.axis("off")
    figure.suptitle("YOLO detections after decode + padded NMS (dashed: ground truth)")
    _common.save(figure, args.out, "detect.png")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(losses, linewidth=0.8)
    axis.set(xlabel="step", ylabel="YOLO loss", yscale="log", title="training loss")
    _common.save(figure, args.out, "detect_loss.png")
    return {"losses": losses, "detections": count}


if __name__ == "__main__":
    main()
