"""What a server accepts and how it batches: one frozen record, its defaults bindable with ``-p``
(``-p serve.settings.max_batch=64``, bound at the edge: :data:`tailor.run_inputs.bound_serve`) so a deployment
tunes them without code."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    #: images in one forward pass at most
    max_batch: int = 32
    #: how long the first image of a batch waits for others to join it (seconds); 0: never wait
    max_wait: float = 0.005
    #: images waiting or being computed at most; beyond it a request is answered 503 with Retry-After
    queue_limit: int = 64
    #: bytes in one request's body at most (413 beyond)
    max_request_bytes: int = 32 * 2**20
    #: images in one request at most
    max_images: int = 16
    #: pixels in one image at most (a decompression bomb is refused before it is decoded)
    max_pixels: int = 40_000_000
    #: categories or neighbours returned per image by default
    k: int = 5

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_limit", "max_request_bytes", "max_images", "max_pixels", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.settings.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait < 0:
            raise ValueError(f"serve.settings.max_wait must be 0 or more seconds, got {self.max_wait}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
