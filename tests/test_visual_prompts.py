"""Visual prompts (VPT-shallow) on the server: features with prompt tokens equal open_clip's own modules run on the
token sequence with the tokens put in; /v1/logits pairs them with text prompts and charges image forwards, as the
ledger keeps them; a ResNet tower, a wrong width or m_v, and a set without stems are clear 422s."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import nn

from sharpzo.data.image_io import decode_rgb
from sharpzo.server.app import create_app
from sharpzo.server.ledger import SCHEMA_VERSION, open_ledger
from sharpzo.server.project_models import register_project_configs
from sharpzo.server.settings import ServerSettings
from sharpzo.server.visual import PromptedImageEncoder, all_pairs
from sharpzo.shared.protocol import Usage
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image

CLASSES = ["cat", "dog", "bird"]
TEXT_WIDTH, VISUAL_WIDTH = 32, 64  # sharpzo-tiny's token widths
MAX_FORWARDS = 12


def reference_features(model: nn.Module, pixels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """[P, N, E], written out from open_clip's modules: the stem, the tokens after the class token, then
    ``visual.transformer``, ``ln_post`` on the class token and ``proj``."""
    visual = model.visual
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    rows = []
    for prompt in prompts:
        seq = torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        rows.append(F.normalize(visual.ln_post(visual.transformer(seq)[:, 0]) @ visual.proj, dim=-1))
    return torch.stack(rows)


def served_features(encoder: PromptedImageEncoder, pixels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    stems = encoder.stems(pixels)
    prompt, image = all_pairs(prompts.shape[0], stems.shape[0], stems.device)
    return encoder.encode(prompts, stems, prompt, image).view(prompts.shape[0], stems.shape[0], -1)


@pytest.mark.parametrize("name", ["sharpzo-tiny", "ViT-B-16"])
def test_features_with_prompt_tokens_equal_open_clip_modules(name: str) -> None:
    register_project_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval().requires_grad_(False)
    size = model.visual.image_size[0]
    width = model.visual.class_embedding.shape[0]
    pixels, prompts = torch.randn(2, 3, size, size), 0.1 * torch.randn(2, 3, width)
    # 20 tokens a pass: every forward in a chunk of its own, and the chunks put back in order
    encoder = PromptedImageEncoder(model, chunk_tokens=20)
    with torch.inference_mode():
        served = served_features(encoder, pixels, prompts)
        reference = reference_features(model, pixels, prompts)
        unprompted = served_features(encoder, pixels, prompts[:, :0])
        plain = F.normalize(model.encode_image(pixels), dim=-1)
    assert served.shape == (2, 2, model.visual.proj.shape[1])
    assert (served - reference).abs().max().item() <= 1e-5
    assert (unprompted - plain.unsqueeze(0)).abs().max().item() <= 1e-5
    assert (served - plain).abs().max().item() > 1e-3  # the tokens do change the features


def _app(ledger: str, model: str = TINY["model"]) -> TestClient:
    settings = ServerSettings(
        model=model, pretrained="none", auth="off", ledger=ledger, max_visual_tokens=4,
        max_image_forwards_per_request=MAX_FORWARDS, max_visual_images_per_set=4,
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _app(str(tmp_path_factory.mktemp("visual") / "ledger.sqlite3")) as client:
        yield client


def _tensor(array: np.ndarray) -> dict:
    return Tensor.from_numpy(array.astype(np.float32)).model_dump()


def _upload(http: TestClient, seeds: range, visual: bool = True) -> str:
    answer = http.post("/v1/image-sets", json={"images": [b64(encoded_image(s)) for s in seeds], "visual": visual})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _body(set_id: str, text: np.ndarray, visual: np.ndarray | None, **extra: object) -> dict:
    body = {"image_set": set_id, "class_names": CLASSES, "prompts": _tensor(text), **extra}
    return body if visual is None else {**body, "visual_prompts": _tensor(visual)}


def test_the_model_reports_its_image_tower(http: TestClient) -> None:
    info = http.get("/v1/model").json()
    assert info["visual_width"] == VISUAL_WIDTH and info["visual_prompts"] is True
    assert info["limits"]["max_image_forwards_per_request"] == MAX_FORWARDS


def test_joint_and_visual_only_logits_pair_the_candidates(http: TestClient) -> None:
    """Candidate p's logits are text prompt p against the images under visual prompt p; one text prompt (P = 1)
    serves every visual candidate."""
    set_id = _upload(http, range(10, 13))
    rng = np.random.default_rng(0)
    text, visual = 0.1 * rng.standard_normal((3, 2, TEXT_WIDTH)), 0.1 * rng.standard_normal((3, 2, VISUAL_WIDTH))
    services = http.app.state.services
    loaded = services.loaded
    pixels = torch.stack([loaded.preprocess(decode_rgb(encoded_image(s), 10**6)) for s in range(10, 13)])
    with torch.inference_mode():
        text_features = services.encoder.encode(torch.from_numpy(text).float(), services.encoder.suffixes(CLASSES, 2))
        images = reference_features(loaded.model, pixels, torch.from_numpy(visual).float())
    expected = loaded.logit_scale * torch.einsum("pce,pne->pnc", text_features, images).numpy()
    for sent_text, want in ((text, expected), (text[:1], None)):
        answer = http.post("/v1/logits", json=_body(set_id, sent_text, visual))
        assert answer.status_code == 200, answer.text
        logits = Tensor.model_validate(answer.json()["logits"]).to_numpy()
        if want is None:  # one text prompt for all: candidate p is text prompt 0 under visual prompt p
            want = loaded.logit_scale * torch.einsum("ce,pne->pnc", text_features[0], images).numpy()
        np.testing.assert_allclose(logits, want, atol=1e-4)
        assert answer.json()["usage"] == Usage(queries=3, image_evals=9, requests=1, image_forwards=9).model_dump()


def test_usage_counts_equal_the_ledger_for_visual_requests(http: TestClient) -> None:
    set_id = _upload(http, range(20, 24))
    rng = np.random.default_rng(1)
    before = Usage.model_validate(http.get("/v1/usage").json())
    charged = Usage()
    for n_text, n_visual, indices in ((2, 2, None), (1, 3, [0, 2]), (2, 1, [1]), (2, None, None)):
        visual = None if n_visual is None else rng.standard_normal((n_visual, 1, VISUAL_WIDTH))
        body = _body(set_id, rng.standard_normal((n_text, 2, TEXT_WIDTH)), visual, indices=indices)
        answer = http.post("/v1/logits", json=body)
        assert answer.status_code == 200, answer.text
        usage = Usage.model_validate(answer.json()["usage"])
        n_img = 4 if indices is None else len(indices)
        assert usage.image_forwards == (0 if n_visual is None else n_visual * n_img)
        charged += usage
    after = Usage.model_validate(http.get("/v1/usage").json())
    assert charged.image_forwards == 8 + 6 + 1
    assert Usage(**{k: getattr(after, k) - getattr(before, k) for k in Usage.model_fields}) == charged


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"visual": np.zeros((2, 1, VISUAL_WIDTH + 1))}, "visual_prompts: width 65 does not match the image tower's"),
        ({"visual": np.zeros((2, 5, VISUAL_WIDTH))}, "visual_prompts: m_v = 5 context vectors; it must be 0..4"),
        ({"visual": np.zeros((2, 1))}, "visual_prompts: shape [2, 1] must be [P, m_v, width]"),
        ({"visual": np.full((2, 1, VISUAL_WIDTH), np.nan)}, "visual_prompts: contains NaN"),
        ({"visual": np.zeros((3, 1, VISUAL_WIDTH))}, "visual_prompts: P = 3 visual prompts cannot pair with 2 text"),
        ({"visual": np.zeros((4, 1, VISUAL_WIDTH)), "text": 1}, "visual_prompts: P_v x N = 16 image forwards is over"),
        ({"stems": False}, "image_set: "),
    ],
)
def test_bad_visual_requests_are_422s_naming_the_field(http: TestClient, change: dict, message: str) -> None:
    stems = change.get("stems", True)
    set_id = _upload(http, range(30, 34) if stems else range(35, 39), visual=stems)
    visual = change.get("visual", np.zeros((2, 1, VISUAL_WIDTH)))
    answer = http.post("/v1/logits", json=_body(set_id, np.zeros((change.get("text", 2), 2, TEXT_WIDTH)), visual))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(message), answer.json()["detail"]


def test_too_many_images_with_stems_is_a_422(http: TestClient) -> None:
    answer = http.post("/v1/image-sets", json={"images": [b64(encoded_image(s)) for s in range(5)], "visual": True})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("images: 5 images is over the limit of 4")


def test_a_set_uploaded_again_with_visual_gets_its_stems(http: TestClient) -> None:
    set_id = _upload(http, range(40, 42), visual=False)
    body = _body(set_id, np.zeros((1, 2, TEXT_WIDTH)), np.zeros((1, 1, VISUAL_WIDTH)))
    assert http.post("/v1/logits", json=body).status_code == 422
    assert _upload(http, range(40, 42)) == set_id
    assert http.post("/v1/logits", json=body).status_code == 200


def test_a_resnet_image_tower_refuses_visual_prompts(tmp_path: Path) -> None:
    with _app(str(tmp_path / "ledger.sqlite3"), model="sharpzo-tiny-rn") as http:
        info = http.get("/v1/model").json()
        assert info["visual_prompts"] is False and info["visual_width"] is None
        upload = http.post("/v1/image-sets", json={"images": [b64(encoded_image(1))], "visual": True})
        assert upload.status_code == 422 and "visual prompts need a ViT image tower" in upload.json()["detail"]
        set_id = _upload(http, range(1, 2), visual=False)
        answer = http.post("/v1/logits", json=_body(set_id, np.zeros((1, 2, TEXT_WIDTH)), np.zeros((1, 1, 8))))
        assert answer.status_code == 422
        assert answer.json()["detail"] == "visual_prompts: visual prompts need a ViT image tower; this model's is " \
            "ModifiedResNet"


def test_a_version_1_ledger_gains_image_forwards(ledger_setting: str) -> None:
    """Migration 2 adds the column to a ledger that has usage rows already, on either backend."""
    ledger = open_ledger(ledger_setting)
    ledger.commit("alice", None, Usage(queries=2, image_evals=8, requests=1), None, "f", b"{}", 60.0)
    ledger.close()
    downgrade = ("ALTER TABLE usage DROP COLUMN image_forwards", "UPDATE schema_version SET version = 1")
    if ledger_setting.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(ledger_setting, autocommit=True) as db:
            for statement in downgrade:
                db.execute(statement)
    else:
        with sqlite3.connect(ledger_setting) as db:
            for statement in downgrade:
                db.execute(statement)
        db.close()
    ledger = open_ledger(ledger_setting)
    try:
        assert SCHEMA_VERSION == 2
        assert ledger.totals("alice", None).model_dump() == {**Usage(queries=2, image_evals=8, requests=1).model_dump(),
                                                              "quota": None}
        charge = Usage(queries=1, image_evals=4, requests=1, image_forwards=4)
        assert ledger.commit("alice", None, charge, None, "g", b"{}", 60.0).totals.image_forwards == 4
        assert ledger.totals("alice", None).queries == 3
    finally:
        ledger.close()


def test_joined_parts_keep_their_stems(http: TestClient) -> None:
    """A set joined from chunks (as the client uploads) scores visual prompts as the set uploaded whole does."""
    parts = [_upload(http, range(50, 52)), _upload(http, range(52, 54))]
    joined = http.post("/v1/image-sets/concat", json={"parts": parts})
    assert joined.status_code == 200, joined.text
    body = {"prompts": _tensor(np.zeros((1, 2, TEXT_WIDTH))), "visual_prompts": _tensor(np.ones((1, 1, VISUAL_WIDTH)))}
    logits = [
        http.post("/v1/logits", json={"image_set": set_id, "class_names": CLASSES, **body}).json()["logits"]
        for set_id in (joined.json()["id"], _upload(http, range(50, 54)))
    ]
    np.testing.assert_allclose(*(Tensor.model_validate(t).to_numpy() for t in logits), atol=1e-6)
    over = http.post("/v1/image-sets/concat", json={"parts": [*parts, _upload(http, range(54, 55))]})
    assert over.status_code == 422 and over.json()["detail"].startswith("parts: 5 images is over the limit of 4")
