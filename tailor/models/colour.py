"""What colour a catalog product is, from its pixels.

Catalog photos show one product on a white background, and a colour name describes the product, not the
photo. So: remove the background (near-white pixels connected to the image border — a white shirt's own
white stays, since the border never reaches it through the shirt's outline), convert what is left to CIELAB,
and describe it the way colour names divide it: chromatic pixels by hue × lightness × chroma, the
achromatic ones (black, grey, white, silver) by lightness alone, each pixel counted softly in both by its
chroma. The square roots of the shares make the histogram a unit vector (the Hellinger embedding), so it can
be joined to other embeddings and compared by cosine.

Measured on the bundled sample's odd years (``bench/colour.py``): a logistic regression on this descriptor
alone names the ``baseColour`` better than on a 6×6×6 Lab histogram of the non-white pixels, and beside the
frozen network features it beats both.

Everything is batched torch on the model's device, part of the model's forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HUE_BINS, LIGHTNESS_BINS, CHROMA_BINS, GREY_BINS = 16, 4, 4, 10
HISTOGRAM_WIDTH = HUE_BINS * LIGHTNESS_BINS * CHROMA_BINS + GREY_BINS
STATS_WIDTH = 7  # mean and spread of L, a, b, and the foreground's share of the photo
DESCRIPTOR_WIDTH = HISTOGRAM_WIDTH + STATS_WIDTH
WHITE = 235 / 255      # a background pixel has every channel at least this bright
GREY_CHROMA = 20.0     # Lab chroma at which a pixel counts as fully chromatic
CHROMA_STEP = 25.0     # width of a chroma bin
MIN_FOREGROUND = 0.02  # below this share of the photo, the mask failed (a white product): use every pixel
WORKING_SIDE = 56      # the descriptor is computed on the photo shrunk to about this many pixels a side

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
_WHITE_POINT = torch.tensor([0.95047, 1.0, 1.08883])  # D65


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels first ``(B, 3, H, W)``, to CIELAB (D65) ``(B, 3, H, W)``: L in [0, 100]."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), linear) / _WHITE_POINT.to(rgb)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_lab` on ``(..., 3)`` Lab rows, clipped into [0, 1] sRGB."""
    L, a, b = lab.unbind(-1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-1)
    xyz = torch.where(f > 0.2069, f ** 3, (f - 16 / 116) / 7.787) * _WHITE_POINT.to(lab)
    linear = (xyz @ torch.linalg.inv(_RGB_TO_XYZ).to(lab).T).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def foreground_mask(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` True where a pixel of ``rgb`` (``(B, 3, H, W)`` in [0, 1]) belongs to the product: every
    pixel but the near-white ones connected to the border. Photos whose foreground comes out under
    ``MIN_FOREGROUND`` keep every pixel."""
    white = (rgb >= WHITE).all(dim=1)
    seed = torch.zeros_like(white)
    seed[:, 0, :] = seed[:, -1, :] = seed[:, :, 0] = seed[:, :, -1] = True
    background = white & seed
    for _ in range(sum(white.shape[1:])):  # grow from the border through white pixels until nothing changes
        grown = (F.max_pool2d(background[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0) & white
        if torch.equal(grown, background):
            break
        background = grown
    foreground = ~background
    failed = foreground.flatten(1).float().mean(1) < MIN_FOREGROUND
    return foreground | failed[:, None, None]


def shrink(rgb: torch.Tensor, side: int = WORKING_SIDE) -> torch.Tensor:
    """Average-pool ``rgb`` so its shorter side is about ``side`` pixels (colours need no detail)."""
    factor = max(1, min(rgb.shape[-2:]) // side)
    return F.avg_pool2d(rgb, factor) if factor > 1 else rgb


def colour_histogram(lab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The square roots of the foreground's shares in the chromatic (hue × lightness × chroma) and achromatic
    (lightness) bins of ``lab`` (``(B, 3, H, W)``, :func:`rgb_to_lab`): ``(B, HISTOGRAM_WIDTH)``, unit rows."""
    L, a, b = lab.unbind(1)
    chroma = torch.sqrt(a * a + b * b)
    hue = torch.atan2(b, a)
    chromatic = (chroma / GREY_CHROMA).clamp(0, 1) * mask
    grey = (1 - chroma / GREY_CHROMA).clamp(0, 1) * mask
    hue_bin = ((hue + torch.pi) / (2 * torch.pi) * HUE_BINS).long().clamp(0, HUE_BINS - 1)
    light_bin = (L / 100 * LIGHTNESS_BINS).long().clamp(0, LIGHTNESS_BINS - 1)
    chroma_bin = (chroma / CHROMA_STEP).long().clamp(0, CHROMA_BINS - 1)
    grey_bin = (L / 100 * GREY_BINS).long().clamp(0, GREY_BINS - 1)
    colour_index = (hue_bin * LIGHTNESS_BINS + light_bin) * CHROMA_BINS + chroma_bin
    index = torch.cat([colour_index.flatten(1), HISTOGRAM_WIDTH - GREY_BINS + grey_bin.flatten(1)], dim=1)
    weight = torch.cat([chromatic.flatten(1), grey.flatten(1)], dim=1)
    histogram = torch.zeros(len(lab), HISTOGRAM_WIDTH, dtype=lab.dtype, device=lab.device)
    histogram.scatter_add_(1, index, weight)
    return (histogram / histogram.sum(1, keepdim=True).clamp_min(1e-8)).sqrt()


def colour_statistics(lab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and spread of the foreground's L, a and b (divided by 50), and its share of the photo."""
    lab = lab.flatten(2)
    weight = mask.flatten(1)[:, None].to(lab)
    count = weight.sum(-1).clamp_min(1)
    mean = (lab * weight).sum(-1) / count
    spread = (((lab - mean[..., None]) ** 2 * weight).sum(-1) / count).sqrt()
    return torch.cat([mean / 50, spread / 50, weight.mean(-1)], dim=1)


def dominant_colour(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` sRGB in [0, 1]: the median Lab colour of each photo's foreground — a swatch for a person."""
    rgb = shrink(rgb)
    mask = foreground_mask(rgb)
    lab = rgb_to_lab(rgb).permute(0, 2, 3, 1)
    medians = torch.stack([lab[i][mask[i]].median(dim=0).values for i in range(len(rgb))])
    return lab_to_rgb(medians)


class ColourDescriptor(nn.Module):
    """Normalised model input → the foreground colour descriptor, ``(B, DESCRIPTOR_WIDTH)``.

    ``mean``/``std``: the input normalisation to undo (the backbone's). After :meth:`fit` the output is centred
    and scaled per dimension by the training images' statistics, so a linear head can use it beside network
    features with one weight decay.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.zeros(DESCRIPTOR_WIDTH))
        self.register_buffer("scale", torch.ones(DESCRIPTOR_WIDTH))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The unstandardised descriptor: the Hellinger histogram, then the Lab statistics."""
        rgb = shrink((x.float() * self.input_std + self.input_mean).clamp(0, 1))
        mask, lab = foreground_mask(rgb), rgb_to_lab(rgb)
        return torch.cat([colour_histogram(lab, mask), colour_statistics(lab, mask)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw(x))

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw descriptors, centred and scaled as :meth:`fit` decided (on ``raw``'s device)."""
        return (raw - self.shift.to(raw.device)) * self.scale.to(raw.device)

    @torch.no_grad()
    def fit(self, raw: torch.Tensor) -> None:
        """Centre and scale by ``raw`` descriptors of training images (``(N, DESCRIPTOR_WIDTH)``)."""
        self.shift.copy_(raw.mean(0))
        self.scale.copy_(1 / raw.std(0).clamp_min(1e-3))


class ColourProbe(nn.Module):
    """Backbone features and the photo's colour descriptor → the product's colour, as a unit vector: the square
    roots of the colour-class probabilities. Two products' vectors have cosine 1 when they are surely the
    same colour and near 0 when surely different — what look-alike search adds to the category embedding
    (:mod:`tailor.search.lookalike`)."""

    def __init__(self, in_features: int, classes: list[str], mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.classes = list(classes)
        self.descriptor = ColourDescriptor(mean, std)
        self.linear = nn.Linear(in_features + DESCRIPTOR_WIDTH, len(self.classes))

    def forward(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.vectors(features.float(), self.descriptor(images))

    def vectors(self, features: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """The colour vectors from features and already standardised descriptors."""
        logits = self.linear(torch.cat([features, descriptors.to(features)], dim=-1))
        return torch.softmax(logits.float(), dim=-1).sqrt()
