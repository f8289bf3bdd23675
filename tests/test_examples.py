"""The runnable examples (cnnkernels.examples): each runs end to end in a few
steps and writes its PNGs; the synthetic data they draw is what it says."""

import importlib

import pytest
import torch

from cnnkernels.examples import _data

pytest.importorskip("tqdm")
pyplot = pytest.importorskip("matplotlib.pyplot")

EXAMPLES = {
    "train_lenet": (["--steps", "3"], ("lenet_training.png", "lenet_predictions.png")),
    "style_transfer": (["--steps", "2", "--size", "32"],
                       ("style_transfer.png", "style_transfer_loss.png")),
    "detect": (["--steps", "2"], ("detect.png", "detect_loss.png")),
    "face_verify": (["--steps", "2"], ("face_verify.png", "face_verify_loss.png")),
    "segment": (["--steps", "2", "--size", "32"], ("segment.png", "segment_loss.png")),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_writes_its_pngs(name, tmp_path):
    if name == "train_lenet":
        pytest.importorskip("sklearn")
    arguments, pngs = EXAMPLES[name]
    module = importlib.import_module(f"cnnkernels.examples.{name}")
    result = module.main([*arguments, "--out", str(tmp_path), "--backend", "cpu"])
    assert result["losses"] and all(map(_finite, result["losses"]))
    for png in pngs:
        image = pyplot.imread(tmp_path / png)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, png


def _finite(value) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


def test_shapes_boxes_frame_their_shapes():
    generator = torch.Generator().manual_seed(3)
    images, boxes, labels = _data.shapes(8, 48, max_objects=1, generator=generator)
    for image, (box,), (label,) in zip(images, boxes, labels, strict=True):
        x0, y0, x1, y1 = box.tolist()
        # The box's centre lies in every shape, painted in its class's colour.
        centre = image[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert int(centre.argmax()) == int(torch.tensor(_data.SHAPES[int(label)][1]).argmax())
        # Outside the box: the grey background only.
        outside = torch.ones(48, 48, dtype=torch.bool)
        outside[max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2] = False
        assert abs(float(image[:, outside].mean()) - 0.45) < 0.03


def test_identity_views_are_closer_to_their_prototype():
    generator = torch.Generator().manual_seed(5)
    prototypes = _data.identity_prototypes(10, 32, generator=generator)
    identity = torch.arange(10)
    views = _data.identity_views(prototypes, identity, generator=generator)
    distances = torch.cdist(views.flatten(1), prototypes.flatten(1))
    own = distances.diagonal()
    others = (distances.sum(1) - own) / 9
    # Shifted and relit, a view stays nearer its own prototype than the others on average.
    assert float(own.mean()) < 0.75 * float(others.mean())


def test_segmentation_masks_mark_the_bright_pixels():
    generator = torch.Generator().manual_seed(7)
    images, masks = _data.segmentation(4, 48, generator=generator)
    assert masks.dtype == torch.int64 and set(masks.unique().tolist()) <= {0, 1}
    inside, outside = images[:, 0][masks == 1], images[:, 0][masks == 0]
    assert inside.mean() > outside.mean() + 0.25
