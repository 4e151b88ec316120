"""POST /v1/token-embeddings' service: a text's tokens and their embeddings, looked up on the model thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np
import torch

from .errors import ApiError
from .text import PromptedTextEncoder, PromptError


class Vocabulary:
    def __init__(self, encoder: PromptedTextEncoder, model_thread: Executor) -> None:
        self.encoder = encoder
        self.model_thread = model_thread

    async def embed(self, text: str) -> tuple[list[int], np.ndarray]:
        """Token ids of ``text`` (no SOS or EOT) and their [n, width] embeddings; a 422 for text it cannot take."""

        def run() -> tuple[list[int], np.ndarray]:
            with torch.inference_mode():
                ids, emb = self.encoder.token_embeddings(text)
                return ids, emb.cpu().numpy()

        try:
            return await asyncio.get_running_loop().run_in_executor(self.model_thread, run)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
