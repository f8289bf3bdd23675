"""A small FaceNet-style embedding network (Schroff et al. 2015), the
course's Siamese encoder f: images -> points on the unit sphere, trained
with the triplet loss max(||f(A) - f(P)||^2 - ||f(A) - f(N)||^2 + alpha, 0)
so that d(x1, x2) = ||f(x1) - f(x2)||^2 is small for the same identity and
large for different ones; face verification thresholds d at some tau.

The trunk: ``stages`` stages of a 3x3 Conv2dNormActivation and a 2x2 max
pool, channels base_channels doubling per stage; global average pool; a
linear layer to embedding_dim; L2 normalisation. Small enough to train on
a CPU (about 0.1 M parameters with the defaults)."""

import torch
from torch.nn import functional as F

from cnnkernels import _args, nn
from cnnkernels.nn import Conv2dNormActivation

__all__ = ["FaceNetEmbedding", "facenet_embedding"]


class FaceNetEmbedding(torch.nn.Module):
    """Input (N, in_channels, H, W), H, W >= 2^stages; output (N,
    embedding_dim), each row of unit L2 norm."""

    def __init__(self, embedding_dim: int = 128, in_channels: int = 3, base_channels: int = 16,
                 stages: int = 4):
        super().__init__()
        embedding_dim = _args.positive_int(embedding_dim, "embedding_dim")
        in_channels = _args.positive_int(in_channels, "in_channels")
        base_channels = _args.positive_int(base_channels, "base_channels")
        stages = _args.positive_int(stages, "stages")
        layers = []
        channels = in_channels
        for stage in range(stages):
            layers += [Conv2dNormActivation(channels, base_channels * 2**stage),
                       nn.MaxPool2d(kernel_size=2, stride=2)]
            channels = base_channels * 2**stage
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.embedding = torch.nn.Linear(channels, embedding_dim)

    def forward(self, x):
        x = self.embedding(torch.flatten(self.avgpool(self.features(x)), 1))
        return F.normalize(x, p=2.0, dim=1)

    def distance(self, x1, x2):
        """d(x1, x2) = ||f(x1) - f(x2)||^2 per pair of images, in [0, 4]."""
        return (self(x1) - self(x2)).square().sum(1)


def facenet_embedding(embedding_dim: int = 128, in_channels: int = 3, base_channels: int = 16,
                      stages: int = 4) -> FaceNetEmbedding:
    """The embedding network f of a Siamese / FaceNet face verifier."""
    return FaceNetEmbedding(embedding_dim, in_channels, base_channels, stages)
