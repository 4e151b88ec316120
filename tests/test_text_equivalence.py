"""The fast prompted text path equals open_clip's own full-context forward (spec: <= 1e-5 in fp32); cached class
suffixes change no bit of it."""

from __future__ import annotations

import subprocess
import sys

import open_clip
import pytest
import torch

from sharpzo.server.model import LoadedModel, UnsupportedModel, check_servable
from sharpzo.server.project_models import register_project_configs
from sharpzo.server.scoring import score
from sharpzo.server.text import PromptedTextEncoder, PromptError

CLASSES = ["Granny Smith apple", "pear", "a much longer class name with several words", "orange", "satsumas"]


def encoder_for(name: str, chunk_tokens: int = 65_536, suffix_cache_size: int = 64) -> PromptedTextEncoder:
    register_project_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    check_servable(model, tokenizer)
    cpu = torch.device("cpu")
    loaded = LoadedModel(model, tokenizer, preprocess, preprocess, name, None, cpu, torch.float32, "fp32")
    return PromptedTextEncoder(loaded, chunk_tokens, suffix_cache_size)


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50", "sharpzo-tiny", "sharpzo-standin-v1", "sharpzo-standin-v2"])
def test_fast_path_matches_reference(name: str) -> None:
    encoder = encoder_for(name, chunk_tokens=64)  # a small chunk also exercises chunking
    with torch.inference_mode():
        _, p0 = encoder.token_embeddings("a photo of a")
        prompts = p0 + 0.05 * torch.randn(3, *p0.shape, generator=torch.Generator().manual_seed(1))
        fast = encoder.encode(prompts, encoder.suffixes(CLASSES, 4))
        reference = encoder.encode_reference(prompts, CLASSES)
        # with ctx = the embeddings of "a photo of a", both equal open_clip's plain encode_text
        texts = encoder.tokenizer([f"a photo of a {c}." for c in CLASSES], context_length=encoder.context_length)
        plain = encoder.model.encode_text(texts, normalize=True)
        at_p0 = encoder.encode(p0.unsqueeze(0), encoder.suffixes(CLASSES, 4))[0]
    assert fast.shape == (3, len(CLASSES), encoder.model.text_projection.shape[1])
    assert (fast - reference).abs().max().item() <= 1e-5
    assert (at_p0 - plain).abs().max().item() <= 1e-5


def test_other_context_lengths_and_m() -> None:
    encoder = encoder_for("sharpzo-tiny")
    with torch.inference_mode():
        for m in (1, 2, 8):
            prompts = 0.02 * torch.randn(2, m, encoder.width)
            fast = encoder.encode(prompts, encoder.suffixes(CLASSES[:2], m))
            assert (fast - encoder.encode_reference(prompts, CLASSES[:2])).abs().max().item() <= 1e-5


def test_cached_suffixes_give_bit_identical_logits() -> None:
    cached, uncached = encoder_for("sharpzo-tiny"), encoder_for("sharpzo-tiny", suffix_cache_size=0)
    images = torch.nn.functional.normalize(torch.randn(5, cached.model.text_projection.shape[1]), dim=-1)
    prompts = 0.02 * torch.randn(2, 4, cached.width)
    first = cached.suffixes(CLASSES, 4)
    assert cached.suffixes(list(CLASSES), 4) is first  # a later request with the same class list
    assert uncached.suffixes(CLASSES, 4) is not uncached.suffixes(CLASSES, 4)
    with torch.inference_mode():
        logits = [score(encoder.encode(prompts, encoder.suffixes(CLASSES, 4)), images, 100.0, None, True).logits
                  for encoder in (cached, cached, uncached)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_overflowing_class_name_is_named() -> None:
    encoder = encoder_for("sharpzo-tiny")
    with pytest.raises(PromptError, match=r"class_names\[1\]"):
        encoder.suffixes(["pear", "word " * 25], 4)


def test_unsupported_text_towers_are_refused() -> None:
    register_project_configs()
    model = open_clip.create_model("sharpzo-tiny", pretrained=None)
    tokenizer = open_clip.get_tokenizer("sharpzo-tiny")
    model.text_pool_type = "last"
    with pytest.raises(UnsupportedModel, match="pooling"):
        check_servable(model, tokenizer)
    model.text_pool_type = "argmax"
    model.attn_mask = torch.zeros_like(model.attn_mask)
    with pytest.raises(UnsupportedModel, match="causal"):
        check_servable(model, tokenizer)


def test_server_refuses_unknown_model_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sharpzo.server", "--model", "no-such-model", "--pretrained", "none"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "unknown model 'no-such-model'" in result.stderr
