"""Face verification with a Siamese / FaceNet embedding network (notes, 4):
f maps an image to a point on the unit sphere, trained with the triplet
loss so that d(x1, x2) = ||f(x1) - f(x2)||^2 is small for two pictures of
the same identity and large otherwise; "same person" iff d <= tau. The
identities are synthetic "faces" (coloured blob patterns seen with random
shifts, lighting and noise); verification is tested one-shot on identities
never seen in training. ``--mining batch-hard`` (the default) trains on
each anchor's hardest positive and negative in the batch
(``cnnkernels.batch_hard_triplet_loss``), ``random`` on random triplets
(``cnnkernels.triplet_margin_loss``). Writes ``face_verify.png`` (ROC
curve, the distances of same and different pairs with the chosen tau, and
example pairs) and ``face_verify_loss.png``.

    python -m cnnkernels.examples.face_verify [--steps 300] [--out DIR]
"""

import torch

import cnnkernels as ck
from cnnkernels.examples import _common, _data
from cnnkernels.models import facenet_embedding

TRAIN_IDENTITIES, TEST_IDENTITIES = 48, 24


def verification_pairs(count: int, prototypes, generator):
    """(first views, second views, same identity?) for count pairs, half the
    same identity and half different."""
    identities = len(prototypes)
    first = torch.randint(identities, (count,), generator=generator)
    other = (first + torch.randint(1, identities, (count,), generator=generator)) % identities
    same = torch.arange(count) % 2 == 0
    second = torch.where(same, first, other)
    return (_data.identity_views(prototypes, first, generator=generator),
            _data.identity_views(prototypes, second, generator=generator), same)


def roc(distances: torch.Tensor, same: torch.Tensor):
    """(false positive rates, true positive rates, thresholds, AUC, best tau, its accuracy)."""
    thresholds = torch.cat([distances.sort().values, distances.max()[None] + 1])
    accepted = distances[None, :] <= thresholds[:, None]
    tpr = (accepted & same).sum(1) / same.sum()
    fpr = (accepted & ~same).sum(1) / (~same).sum()
    auc = torch.trapezoid(torch.cat([torch.zeros(1), tpr]), torch.cat([torch.zeros(1), fpr]))
    accuracy = (accepted == same).float().mean(1)
    best = int(accuracy.argmax())
    return fpr, tpr, thresholds, float(auc), float(thresholds[best]), float(accuracy[best])


def main(argv=None) -> dict:
    cli = _common.parser(__doc__.split("\n\n")[0], steps=300)
    cli.add_argument("--mining", choices=("batch-hard", "random"), default="batch-hard")
    cli.add_argument("--margin", type=float, default=0.4)
    args = cli.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    prototypes = _data.identity_prototypes(TRAIN_IDENTITIES + TEST_IDENTITIES, 32,
                                           generator=generator)
    train, test = prototypes[:TRAIN_IDENTITIES], prototypes[TRAIN_IDENTITIES:]
    model = facenet_embedding(embedding_dim=64, base_channels=16, stages=3).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    with ck.use(backend=args.backend):
        for _ in (bar := _common.progress(args.steps, f"FaceNet ({args.mining})")):
            if args.mining == "batch-hard":
                # 8 identities x 4 views: every anchor has positives and negatives.
                labels = torch.randperm(TRAIN_IDENTITIES, generator=generator)[:8].repeat(4)
                views = _data.identity_views(train, labels, generator=generator)
                loss = ck.batch_hard_triplet_loss(model(views.to(args.device)),
                                                  labels.to(args.device), margin=args.margin)
            else:
                anchor_ids, positives, negatives = (
                    _data.identity_views(train, ids, generator=generator).to(args.device)
                    for ids in _triplet_identities(32, generator))
                loss = ck.triplet_margin_loss(model(anchor_ids), model(positives),
                                              model(negatives), margin=args.margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        first, second, same = verification_pairs(400, test, generator)
        with torch.no_grad():
            distances = model.distance(first.to(args.device), second.to(args.device)).cpu()
    fpr, tpr, _, auc, tau, accuracy = roc(distances, same)
    print(f"unseen identities: ROC AUC {auc:.3f}, accuracy {accuracy:.3f} at tau = {tau:.3f}")

    plt = _common.pyplot()
    figure = plt.figure(figsize=(11, 6.2), layout="constrained")
    grid = figure.add_gridspec(2, 6)
    curve = figure.add_subplot(grid[0, :3])
    curve.plot(fpr, tpr)
    curve.plot([0, 1], [0, 1], color="grey", linestyle=":")
    curve.set(xlabel="false positive rate", ylabel="true positive rate",
              title=f"ROC on {TEST_IDENTITIES} unseen identities (AUC {auc:.3f})")
    histogram = figure.add_subplot(grid[0, 3:])
    histogram.hist(distances[same], bins=30, alpha=0.6, label="same identity")
    histogram.hist(distances[~same], bins=30, alpha=0.6, label="different identities")
    histogram.axvline(tau, color="black", linestyle="--", label=f"tau = {tau:.2f}")
    histogram.set(xlabel="d = ||f(x1) - f(x2)||^2", ylabel="pairs",
                  title=f"accuracy {accuracy:.3f} at tau")
    histogram.legend(fontsize=8)
    for column in range(3):
        pair = column * 2 + (column % 2)
        verdict = "same" if distances[pair] <= tau else "different"
        correct = (distances[pair] <= tau) == same[pair]
        for offset, image in enumerate((first[pair], second[pair])):
            axis = figure.add_subplot(grid[1, 2 * column + offset])
            axis.imshow(image.permute(1, 2, 0).numpy())
            axis.axis("off")
            if offset == 0:
                axis.set_title(f"d = {float(distances[pair]):.2f}: {verdict}", loc="left",
                               fontsize=9, color="green" if correct else "red")
    _common.save(figure, args.out, "face_verify.png")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(losses, linewidth=0.8)
    axis.set(xlabel="step", ylabel="triplet loss", title=f"training loss ({args.mining})")
    _common.save(figure, args.out, "face_verify_loss.png")
    return {"losses": losses, "auc": auc, "accuracy": accuracy}


def _triplet_identities(count: int, generator):
    """Identities of ``count`` random triplets (anchor = positive != negative)."""
    anchor = torch.randint(TRAIN_IDENTITIES, (count,), generator=generator)
    negative = (anchor + torch.randint(1, TRAIN_IDENTITIES, (count,), generator=generator)) \
        % TRAIN_IDENTITIES
    return anchor, anchor, negative


if __name__ == "__main__":
    main()
