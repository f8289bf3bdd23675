"""Train the course's LeNet-5 on scikit-learn's bundled 8x8 digits (1,797
images, upsampled to LeNet's 32x32 input; nothing is downloaded) with every
convolution and pooling on cnnkernels, and plot the training loss and the
held-out accuracy (``lenet_training.png``) and a grid of test predictions
(``lenet_predictions.png``).

    python -m cnnkernels.examples.train_lenet [--steps 600] [--out DIR]
"""

import importlib

import torch
import torch.nn.functional as F

import cnnkernels as ck
from cnnkernels.examples import _common
from cnnkernels.models import lenet5


def digits(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (1797, 1, 32, 32) standardised, labels (1797,))."""
    try:
        datasets = importlib.import_module("sklearn.datasets")
    except ImportError as error:
        raise SystemExit('this example needs scikit-learn: pip install "cnnkernels[examples]"') \
            from error
    bunch = datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    return images.to(device), torch.tensor(bunch.target, dtype=torch.int64, device=device)


def accuracy(model, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(images).argmax(1) == labels).float().mean().item()
    model.train()
    return correct


def main(argv=None) -> dict:
    args = _common.parser(__doc__.split("\n\n")[0], steps=600).parse_args(argv)
    torch.manual_seed(args.seed)
    images, labels = digits(args.device)
    order = torch.randperm(len(labels), device=args.device)
    test, train = order[:360], order[360:]
    model = lenet5(num_classes=10, in_channels=1).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses, evaluations = [], []
    with ck.use(backend=args.backend):
        for step in (bar := _common.progress(args.steps, "LeNet-5")):
            batch = train[torch.randint(len(train), (64,), device=args.device)]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 49 or step == args.steps - 1:
                evaluations.append((step + 1, accuracy(model, images[test], labels[test])))
                bar.set_postfix(loss=f"{losses[-1]:.3f}", test_accuracy=f"{evaluations[-1][1]:.3f}")
        with torch.no_grad():
            model.eval()
            shown = test[:24]
            predicted = model(images[shown]).argmax(1)

    plt = _common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(range(1, len(losses) + 1), losses, linewidth=0.8)
    left.set(xlabel="step", ylabel="cross-entropy", title="training loss", yscale="log")
    right.plot(*zip(*evaluations, strict=True), marker="o")
    right.set(xlabel="step", ylabel="accuracy", title=f"held-out accuracy ({len(test)} digits)",
              ylim=(0, 1))
    _common.save(figure, args.out, "lenet_training.png")

    figure, axes = plt.subplots(3, 8, figsize=(9, 3.8))
    for axis, index, guess in zip(axes.flat, shown.tolist(), predicted.tolist(), strict=True):
        axis.imshow(images[index, 0].cpu().numpy(), cmap="gray")
        right_answer = guess == labels[index].item()
        axis.set_title(str(guess), color="green" if right_answer else "red", fontsize=10)
        axis.axis("off")
    figure.suptitle("LeNet-5 on held-out digits (red: wrong)")
    _common.save(figure, args.out, "lenet_predictions.png")
    final = evaluations[-1][1]
    print(f"held-out accuracy after {args.steps} steps: {final:.3f}")
    return {"losses": losses, "accuracy": final}


if __name__ == "__main__":
    main()
