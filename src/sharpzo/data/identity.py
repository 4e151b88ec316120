"""The identity of images and image sets, one definition for the client and the server.

An image is the sha256 of its encoded bytes. An image set is a digest of its images' digests in order, how they are
encoded (augmentation and its seed) and a scope, what else the identity depends on: the server, for the client's
index of uploads; the model and the owner, for a server's set ids; the model's image tower, for the features that
replicas share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_set_key(image_digests: Sequence[str], augment: bool, seed: int, scope: str) -> str:
    digest = hashlib.sha256(f"{scope}|{augment}|{seed}|{len(image_digests)}".encode())
    for item in image_digests:
        digest.update(item.encode("ascii"))  # fixed-length hex: no separator needed
    return digest.hexdigest()


def joined_set_key(part_ids: Sequence[str], scope: str) -> str:
    """The key of the set that holds the parts' images in order."""
    return hashlib.sha256(f"concat|{scope}|{'|'.join(part_ids)}".encode()).hexdigest()
