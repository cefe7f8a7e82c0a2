"""Networks for episodic few-shot learning: the Relation Network (Sung et al., 2018, "Learning to Compare")
and the embedding heads a trained Prototypical Network uses.

The relation-net notebook was stuck at 84×84 because its relation module flattened a fixed-size map into a
fully connected layer. Here the relation module ends in adaptive average pooling, so any input size (and any
backbone's feature maps) works.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU and (optionally) 2×2 max-pooling: the paper's building block."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The paper's embedding module, trained from scratch: four conv blocks (the first two pooled).
    Images (B, 3, H, W) → feature maps (B, channels, H/4, W/4), for any H and W."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.out_channels = channels
        self.blocks = nn.Sequential(conv_block(3, channels, True), conv_block(channels, channels, True),
                                    conv_block(channels, channels, False), conv_block(channels, channels, False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images)


class FeatureMaps(nn.Module):
    """A timm backbone's last feature maps (before pooling): the pretrained embedding of a Relation Network."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)


class RelationModule(nn.Module):
    """Scores a (class, query) pair of feature maps in [0, 1].

    Wide maps (a pretrained backbone's hundreds of channels) first pass a shared 1×1 adapter down to
    ``channels``: applied to each map once rather than to every pair, it keeps an episode cheap. The pair is
    then concatenated along channels, passed through two conv blocks, pooled to 1×1 whatever its size, and
    mapped by two fully connected layers to a sigmoid score.
    """

    def __init__(self, in_channels: int, channels: int = 64, hidden: int = 8):
        super().__init__()
        self.in_channels = in_channels
        if in_channels > channels:
            self.adapter: nn.Module = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.BatchNorm2d(channels),
                                                    nn.ReLU(inplace=True))
            in_channels = channels
        else:
            self.adapter = nn.Identity()
        self.convs = nn.Sequential(conv_block(2 * in_channels, channels, True), conv_block(channels, channels, True),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        """``class_maps`` (n_way, C, h, w), ``query_maps`` (M, C, h, w) → scores (M, n_way)."""
        n, m = len(class_maps), len(query_maps)
        class_maps, query_maps = self.adapter(class_maps), self.adapter(query_maps)
        pairs = torch.cat([class_maps[None].expand(m, *class_maps.shape),
                           query_maps[:, None].expand(m, n, *query_maps.shape[1:])], dim=2)
        scores = self.fc(self.convs(pairs.flatten(0, 1)))
        return torch.sigmoid(scores).view(m, n)


def relation_scores(relation: RelationModule, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """A class is represented by the element-wise mean of its support maps.

    The paper sums them and trains one network per K; the mean keeps a class map on the scale of a single
    image's, so one network trained on 1-shot episodes also scores 5-shot episodes.
    ``support`` (n_way, k_shot, C, h, w), ``query`` (M, C, h, w) → scores (M, n_way) in [0, 1].
    """
    return relation(support.mean(dim=1), query)
