"""Image features in PostgreSQL, shared by every replica: an image set uploaded on one replica is scored on any.

Features are keyed by content (model, image-tower weights, preprocessing, augmentation and the image bytes), so
the same images are encoded once for everyone; which account may use a set stays in the ledger's ``image_sets``
table, checked before any lookup here (`images.ImageSets`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sharpzo.data.identity import image_set_key

from .ledger.core import Row
from .ledger.postgres import PostgresDatabase
from .model import LoadedModel

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS image_features (
        content TEXT PRIMARY KEY,
        rows INTEGER NOT NULL,
        dim INTEGER NOT NULL,
        features BYTEA NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS image_set_features (
        set_id TEXT PRIMARY KEY,
        content TEXT NOT NULL REFERENCES image_features (content)
    )""",
)


def model_fingerprint(loaded: LoadedModel) -> str:
    """What makes a model's image features what they are: its name, image-tower weights (and so precision) and
    preprocessing."""
    digest = hashlib.sha256(f"{loaded.name}|{loaded.preprocess!r}".encode())
    for name, tensor in loaded.model.visual.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SharedFeatureStore:
    """Float32 features [N, dim] per content key, and which content each image set id holds."""

    def __init__(self, url: str, max_connections: int = 4) -> None:
        self._db = PostgresDatabase(url, max_connections=max_connections)
        self.location = self._db.location
        with self._db.transaction() as execute:
            execute(self._db.schema_lock, ())  # replicas starting together must not race on CREATE TABLE
            for statement in _SCHEMA:
                execute(statement, ())
        self._model_fingerprints: dict[int, str] = {}

    def content_key(self, loaded: LoadedModel, image_digests: list[str], augment: bool, seed: int) -> str:
        """The key of these images' features under this model; hashing the weights happens once per model."""
        model = self._model_fingerprints.get(id(loaded))
        if model is None:
            model = self._model_fingerprints[id(loaded)] = model_fingerprint(loaded)
        return image_set_key(image_digests, augment, seed, scope=model)

    @staticmethod
    def _tensor(row: Row, device: torch.device) -> torch.Tensor:
        rows, dim, data = row
        array = np.frombuffer(bytes(data), dtype="<f4").reshape(int(rows), int(dim))
        return torch.from_numpy(array.copy()).to(device)

    def features(self, content: str, device: torch.device) -> torch.Tensor | None:
        """Features already encoded for this content, by any replica for any account."""
        found = self._db.run("SELECT rows, dim, features FROM image_features WHERE content = ?", (content,))
        return self._tensor(found[0], device) if found else None

    def load(self, set_id: str, device: torch.device) -> torch.Tensor | None:
        """The features of an image set uploaded on any replica."""
        found = self._db.run(
            "SELECT f.rows, f.dim, f.features FROM image_set_features s JOIN image_features f "
            "ON f.content = s.content WHERE s.set_id = ?",
            (set_id,),
        )
        return self._tensor(found[0], device) if found else None

    def save(self, set_id: str, content: str, features: torch.Tensor) -> None:
        array = features.detach().float().cpu().numpy().astype("<f4", copy=False)
        with self._db.transaction() as execute:
            execute(
                "INSERT INTO image_features (content, rows, dim, features) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (content) DO NOTHING",
                (content, int(array.shape[0]), int(array.shape[1]), array.tobytes()),
            )
            execute("INSERT INTO image_set_features (set_id, content) VALUES (?, ?) ON CONFLICT (set_id) DO NOTHING",
                    (set_id, content))

    def close(self) -> None:
        self._db.close()
