"""The prompted text encoder: soft context vectors in, normalised class text features out.

The prompt for class k of candidate p is ``[SOS] prompts[p] tokens(class_k + ".") [EOT]``.
The text tower is causal, so the ``[SOS] + ctx`` prefix is the same for every class of a
candidate: the fast path runs it once per candidate and lets each class suffix attend to
its cached keys and values, and it stops every sequence at the longest EOT instead of
running the whole context. ``encode_reference`` is the plain full-context path that
CoOp-style code runs; tests hold the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .model import LoadedModel

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock


class PromptError(ValueError):
    """A prompt or class list that this model cannot encode; the message names the culprit."""


@dataclass(frozen=True)
class SuffixGroup:
    """The classes whose suffixes have one length: no padding, and EOT is every row's last token."""

    classes: torch.Tensor  # [C_g] long, positions in the class list
    tokens: torch.Tensor  # [C_g, L_g] long


@dataclass(frozen=True)
class ClassSuffixes:
    """Token ids of ``"{name}." [EOT]`` for each class: padded to one length, and grouped by length."""

    names: tuple[str, ...]
    m: int  # context vectors these suffixes were checked to fit after
    tokens: torch.Tensor  # [C, Ls] long, right-padded
    eot: torch.Tensor  # [C] long, EOT index within the suffix
    groups: tuple[SuffixGroup, ...]

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def token_count(self) -> int:
        """Suffix tokens one candidate runs through the fast path."""
        return sum(g.tokens.numel() for g in self.groups)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _qkv(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _split_heads(q, attn.num_heads), _split_heads(k, attn.num_heads), _split_heads(v, attn.num_heads)


def _finish_block(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    x = x + block.ls_1(block.attn.out_proj(_merge_heads(attended)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class PromptedTextEncoder:
    def __init__(self, loaded: LoadedModel, chunk_tokens: int = 65_536, suffix_cache_size: int = 64) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.width = loaded.width
        self.context_length = loaded.context_length
        self.chunk_tokens = chunk_tokens
        # a tuning run sends the same class list with every request: tokenise it once, not per request
        self._suffixes = lru_cache(maxsize=suffix_cache_size)(self._build_suffixes)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def token_embeddings(self, text: str) -> tuple[list[int], torch.Tensor]:
        """Token ids and embeddings of ``text`` without SOS and EOT."""
        ids = self.token_ids(text)
        if not ids:
            raise PromptError("text: it has no tokens")
        if len(ids) + 2 > self.context_length:
            raise PromptError(f"text: {len(ids)} tokens do not fit the context of {self.context_length}")
        index = torch.tensor(ids, device=self.device)
        return ids, self.model.token_embedding(index).float()

    def suffixes(self, class_names: list[str], m: int) -> ClassSuffixes:
        """Raises PromptError naming the class whose suffix does not fit after ``m`` context vectors."""
        return self._suffixes(tuple(class_names), m)

    def _build_suffixes(self, names: tuple[str, ...], m: int) -> ClassSuffixes:
        rows = []
        for k, name in enumerate(names):
            ids = self.token_ids(f"{name}.") + [self.tokenizer.eot_token_id]
            if 1 + m + len(ids) > self.context_length:
                raise PromptError(
                    f"class_names[{k}]: {name!r} needs {len(ids)} tokens after {m} context vectors, "
                    f"over the context length of {self.context_length}"
                )
            rows.append(ids)
        length = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), length, dtype=torch.long)
        for k, ids in enumerate(rows):
            tokens[k, : len(ids)] = torch.tensor(ids)
        eot = torch.tensor([len(ids) - 1 for ids in rows])
        groups = tuple(
            SuffixGroup(members.to(self.device), tokens[members, :n].to(self.device))
            for n in sorted(set(len(r) for r in rows))
            for members in [torch.tensor([k for k, r in enumerate(rows) if len(r) == n])]
        )
        return ClassSuffixes(names, m, tokens.to(self.device), eot.to(self.device), groups)

    def _project(self, eot_states: torch.Tensor) -> torch.Tensor:
        features = self.model.ln_final(eot_states) @ self.model.text_projection
        return F.normalize(features.float(), dim=-1)

    def _prefix(self, prompts: torch.Tensor) -> torch.Tensor:
        sos = self.model.token_embedding.weight[self.tokenizer.sot_token_id]
        x = torch.cat([sos.expand(prompts.shape[0], 1, -1), prompts.to(self.dtype)], dim=1)
        return x + self.model.positional_embedding[: x.shape[1]].to(self.dtype)

    def encode(self, prompts: torch.Tensor, suffixes: ClassSuffixes) -> torch.Tensor:
        """Normalised text features [P, C, embed_dim] through the prefix-cached, EOT-cut path."""
        step = max(1, self.chunk_tokens // suffixes.token_count)
        chunks = [prompts[i : i + step] for i in range(0, prompts.shape[0], step)]
        return torch.cat([self._encode_chunk(chunk, suffixes) for chunk in chunks])

    def _encode_chunk(self, prompts: torch.Tensor, suffixes: ClassSuffixes) -> torch.Tensor:
        n_cand, n_prefix = prompts.shape[0], prompts.shape[1] + 1
        xp = self._prefix(prompts)  # [P, Lp, W]
        xs, visible = [], []
        for group in suffixes.groups:
            n_cls, n_suf = group.tokens.shape
            positions = self.model.positional_embedding[n_prefix : n_prefix + n_suf].to(self.dtype)
            x = self.model.token_embedding(group.tokens).to(self.dtype) + positions  # [C_g, L_g, W]
            xs.append(x.unsqueeze(0).expand(n_cand, -1, -1, -1).reshape(n_cand * n_cls, n_suf, self.width))
            # suffix token j sees the whole prefix and suffix tokens 0..j
            mask = torch.ones(n_suf, n_prefix + n_suf, dtype=torch.bool, device=self.device)
            mask[:, n_prefix:] = torch.ones(n_suf, n_suf, dtype=torch.bool, device=self.device).tril()
            visible.append(mask)
        for block in self.model.transformer.resblocks:
            q, k, v = _qkv(block.attn, block.ln_1(xp))
            for i, group in enumerate(suffixes.groups):
                qs, ks, vs = _qkv(block.attn, block.ln_1(xs[i]))
                shared = (n_cand, len(group.classes)) + k.shape[1:]
                k_all = torch.cat([k.unsqueeze(1).expand(shared).reshape(-1, *k.shape[1:]), ks], dim=2)
                v_all = torch.cat([v.unsqueeze(1).expand(shared).reshape(-1, *v.shape[1:]), vs], dim=2)
                attended = F.scaled_dot_product_attention(qs, k_all, v_all, attn_mask=visible[i])
                xs[i] = _finish_block(block, xs[i], attended)
            xp = _finish_block(block, xp, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        features = torch.empty(n_cand, len(suffixes.names), self.model.text_projection.shape[1], device=self.device)
        for i, group in enumerate(suffixes.groups):
            features[:, group.classes] = self._project(xs[i][:, -1]).view(n_cand, len(group.classes), -1)
        return features

    def encode_reference(self, prompts: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """The naive path: full-context sequences through open_clip's own transformer, per class and candidate."""
        n_cand, m = prompts.shape[:2]
        suffixes = self.suffixes(class_names, m)
        n_cls = len(class_names)
        tokens = torch.zeros(n_cls, self.context_length, dtype=torch.long, device=self.device)
        tokens[:, 0] = self.tokenizer.sot_token_id
        tokens[:, 1 + m : 1 + m + suffixes.length] = suffixes.tokens
        x = self.model.token_embedding(tokens).to(self.dtype).unsqueeze(0).repeat(n_cand, 1, 1, 1)
        x[:, :, 1 : 1 + m] = prompts.to(self.dtype).unsqueeze(1)
        x = x.reshape(n_cand * n_cls, self.context_length, self.width) + self.model.positional_embedding.to(self.dtype)
        x = self.model.transformer(x, attn_mask=self.model.attn_mask)
        eot = (suffixes.eot + 1 + m).repeat(n_cand)
        states = x[torch.arange(x.shape[0], device=self.device), eot]
        return self._project(states).view(n_cand, n_cls, -1)
