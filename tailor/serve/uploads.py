"""Uploaded images: counted, decoded from memory and refused with the reason a client can act on — too many
(413), too many pixels (413, checked from the header before decoding), not an image (415) — never a 500."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tailor.data.images import ImageError, ImageTooLarge, decode_image
from tailor.serve.settings import ServeSettings

#: uploads are decoded at most this large on the longer side (the models read 224–300 px)
UPLOAD_MAX_SIDE = 512


class UploadError(ValueError):
    """A request whose images cannot be used, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def check_count(uploads: Sequence[Upload], settings: ServeSettings, at_least: int = 1) -> None:
    """Refuse a request with no image (400) or more than ``settings.max_images`` (413)."""
    if len(uploads) < at_least:
        raise UploadError(400, f"send {'an image' if at_least == 1 else f'at least {at_least} images'} in the "
                               f"form field 'images' ({len(uploads)} received)")
    if len(uploads) > settings.max_images:
        raise UploadError(413, f"{len(uploads)} images in one request; at most {settings.max_images}")


def decode_upload(upload: Upload, settings: ServeSettings) -> torch.Tensor:
    """One upload as an RGB ``uint8`` tensor (3, H, W), at most :data:`UPLOAD_MAX_SIDE` on the longer side."""
    if not upload.data:
        raise UploadError(400, f"{upload.name}: the file is empty")
    try:
        return decode_image(io.BytesIO(upload.data), max_side=UPLOAD_MAX_SIDE, min_side=UPLOAD_MAX_SIDE // 2,
                            max_pixels=settings.max_pixels, name=upload.name)
    except ImageTooLarge as err:
        raise UploadError(413, str(err)) from None
    except ImageError as err:
        raise UploadError(415, str(err)) from None


def decode_uploads(uploads: Sequence[Upload], settings: ServeSettings, at_least: int = 1,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every upload decoded, and made a model's input by ``prepare`` (the first unusable one refuses the
    request, naming the file)."""
    check_count(uploads, settings, at_least)
    images = [decode_upload(upload, settings) for upload in uploads]
    return [prepare(image) for image in images] if prepare else images
