"""Visual and joint prompts from the client (``--prompt visual|joint``): the prompt spaces, a short run of every
optimiser within its budget on the tiny ViT, config.json's kind and split, and the client's count of image forwards
equal to the ledger's."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sharpzo.client import tune
from sharpzo.client.api import ApiClient, Scored, UsageMismatch, check_usage
from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.image_sets import UploadIndex, upload_split
from sharpzo.client.prompt import PromptSpace
from sharpzo.client.prompt_map import PromptMap
from sharpzo.client.settings import TuneSettings
from sharpzo.client.tasks import resolve_task
from sharpzo.client.tune import require_visual
from sharpzo.shared.protocol import Limits, ModelInfo, Usage

from .conftest import TINY
from .test_client_e2e import SHARPZO, log_lines

VISUAL_WIDTH = 64  # sharpzo-tiny's image tower
MAX_FORWARDS = 1000  # animals' test split (1000 images) fits one candidate a request; its 2-shot train set, 50
SHOTS, SEED = 2, 3


def _p0(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.02, size=(4, 32)).astype(np.float32)


def _joint(dim: int = 9, visual_dim: int | None = None, visual_spread: float = 0.7) -> PromptMap:
    return PromptMap.create("joint", _p0(), dim, seed=5, alpha=1.0, visual_dim=visual_dim, visual_tokens=3,
                            visual_width=VISUAL_WIDTH, visual_spread=visual_spread)


def test_w_zero_is_the_initial_prompt_and_zero_shot_sends_no_visual_prompt() -> None:
    space = _joint()
    at_zero = space.prompts(np.zeros(space.dim))
    assert np.array_equal(at_zero.text[0], _p0())
    assert at_zero.visual is not None and at_zero.visual.shape == (1, 3, VISUAL_WIDTH) and not at_zero.visual.any()
    zero_shot = space.zero_shot()
    assert zero_shot.visual is None and np.array_equal(zero_shot.text[0], _p0())
    visual = PromptMap.create("visual", _p0(), 6, seed=5, alpha=1.0, visual_tokens=2, visual_width=VISUAL_WIDTH,
                              visual_spread=1.0).prompts(np.ones((4, 6)))
    assert visual.text.shape == (1, 4, 32) and np.array_equal(visual.text[0], _p0())  # one text prompt for all
    text = PromptMap.create("text", _p0(), 6, seed=5, alpha=1.0)
    assert np.array_equal(text.prompts(np.zeros(6)).text, text.zero_shot().text) and text.visual is None


@pytest.mark.parametrize(("visual_dim", "split"), [(None, (5, 4)), (2, (7, 2))])
def test_joint_w_splits_as_recorded(visual_dim: int | None, split: tuple[int, int]) -> None:
    space = _joint(visual_dim=visual_dim)
    record = space.record()
    assert (record["kind"], record["text_dim"], record["visual_dim"]) == ("joint", *split)
    d_t = split[0]
    for i in range(space.dim):
        moved = space.prompts(np.eye(space.dim)[i])
        assert moved.visual is not None
        assert (np.abs(moved.text[0] - _p0()).max() > 0) == (i < d_t), i
        assert (np.abs(moved.visual).max() > 0) == (i >= d_t), i
    # the text part is a text run's prompt space with d_t coordinates, bit for bit
    assert space.text is not None
    assert np.array_equal(space.text.projection, PromptSpace.create(_p0(), d_t, seed=5).projection)


def test_each_tower_moves_in_its_own_spreads() -> None:
    """At alpha = visual_alpha = 1 an isotropic step of r spreads moves each tower's tokens by about r of its own
    spreads."""
    space = PromptMap.create("joint", _p0(), 512, seed=1, alpha=1.0, visual_tokens=8, visual_width=VISUAL_WIDTH,
                             visual_spread=0.7, visual_alpha=1.0)
    r = 0.3
    moved = space.prompts(r * np.random.default_rng(2).standard_normal(512))
    assert moved.visual is not None and space.text is not None
    text_spreads = np.sqrt(np.mean((moved.text[0] - _p0()) ** 2)) / space.text.spread
    visual_spreads = np.sqrt(np.mean(moved.visual[0] ** 2)) / 0.7
    assert text_spreads == pytest.approx(r, rel=0.15) and visual_spreads == pytest.approx(r, rel=0.15)


def test_visual_alpha_scales_the_image_tower_alone_and_is_recorded() -> None:
    """visual_alpha is the image tower's own alpha: the visual tokens move visual_alpha times as far (so an
    optimiser's lr reaches them times visual_alpha**2), the text part is unchanged, bit for bit."""
    def space(visual_alpha: float) -> PromptMap:
        return PromptMap.create("joint", _p0(), 512, seed=1, alpha=1.0, visual_tokens=8, visual_width=VISUAL_WIDTH,
                                visual_spread=0.7, visual_alpha=visual_alpha)

    w = 0.3 * np.random.default_rng(2).standard_normal(512)
    plain, scaled = space(1.0).prompts(w), space(0.05).prompts(w)
    assert plain.visual is not None and scaled.visual is not None
    assert np.array_equal(plain.text, scaled.text)
    assert np.allclose(scaled.visual, 0.05 * plain.visual, rtol=1e-5, atol=1e-7)
    assert space(0.05).record()["visual_alpha"] == 0.05
    with pytest.raises(ValueError, match="visual_alpha must be positive"):
        TuneSettings(prompt="visual", visual_alpha=0.0)
    assert TuneSettings(prompt="visual", visual_alpha=0.05).run_settings()["visual_alpha"] == 0.05


def test_settings_check_the_kind_and_the_split() -> None:
    assert TuneSettings().prompt == "text" and "prompt" in TuneSettings().run_settings()
    with pytest.raises(ValueError, match="unknown prompt 'image'"):
        TuneSettings(prompt="image")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="visual_dim splits w for --prompt joint"):
        TuneSettings(prompt="visual", visual_dim=3)
    with pytest.raises(ValueError, match="1 <= visual_dim < dim"):
        TuneSettings(prompt="joint", dim=4, visual_dim=4)


def _model(visual: bool) -> ModelInfo:
    limits = Limits(max_candidates=8, max_classes=8, max_images_per_request=8, max_images_per_set=8,
                    max_image_pixels=8, max_body_bytes=8, max_visual_tokens=4 if visual else 0)
    return ModelInfo(name="m", pretrained=None, embed_dim=8, width=8, context_length=8, logit_scale=100.0,
                     device="cpu", precision="fp32", limits=limits, visual_prompts=visual,
                     visual_width=VISUAL_WIDTH if visual else None)


def test_a_server_without_visual_prompts_is_refused_before_any_upload() -> None:
    require_visual(_model(False), TuneSettings())
    require_visual(_model(True), TuneSettings(prompt="visual"))
    with pytest.raises(ValueError, match="--prompt joint needs 4 visual prompt tokens; .* takes none"):
        require_visual(_model(False), TuneSettings(prompt="joint"))
    with pytest.raises(ValueError, match="needs 5 visual prompt tokens; .* takes 4"):
        require_visual(_model(True), TuneSettings(prompt="visual", visual_tokens=5))


def test_a_charge_of_other_image_forwards_is_a_mismatch() -> None:
    check_usage(Usage(queries=2, image_evals=20, requests=1, image_forwards=20), 2, 10, visual=2)
    with pytest.raises(UsageMismatch):
        check_usage(Usage(queries=2, image_evals=20, requests=1, image_forwards=10), 2, 10, visual=2)
    with pytest.raises(UsageMismatch):
        check_usage(Usage(queries=2, image_evals=20, requests=1, image_forwards=20), 2, 10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    ledger = tmp_path_factory.mktemp("visual-client") / "ledger.sqlite3"
    env = {"SHARPZO_LEDGER": str(ledger), "SHARPZO_MAX_IMAGE_FORWARDS_PER_REQUEST": str(MAX_FORWARDS)}
    with EmbeddedServer(**TINY, env=env) as running:
        yield running


def _usage(server: EmbeddedServer) -> Usage:
    return Usage.model_validate(httpx.get(f"{server.url}/v1/usage", timeout=30).json())


def _forwards_in_log(run: Path, sizes: dict[str, int]) -> int:
    """The image forwards the log's requests need: each candidate scored with a visual prompt runs every image of its
    split; the zero-shot evaluation sends none, and a final evaluation at a monitored tell is that monitor's."""
    lines = log_lines(run)
    asked = sum(line["n"] * sizes[line["split"]] for line in lines if "n" in line)
    monitored_at = {line["tells"] for line in lines if line["stage"] == "monitor"}
    scored = [line for line in lines if line["stage"] == "monitor"
              or (line["stage"] == "final" and line["tells"] not in monitored_at)]
    return asked + len(scored) * (sizes["val"] + sizes["test"])


@pytest.mark.parametrize("method", ["sharpzo", "zo-sgd", "spsa-gc", "bbt"])
def test_every_method_tunes_visual_prompts_within_budget_and_counts_as_the_ledger(
    server: EmbeddedServer, tmp_path: Path, method: str
) -> None:
    options = {"sharpzo": {"popsize": 6, "switch_iterations": 1}, "bbt": {"popsize": 6}}.get(method, {})
    before = _usage(server)
    result = tune("animals", server=server.url, prompt="visual", method=method, budget=60, shots=SHOTS, seed=SEED,
                  dim=8, eval_every=30, options=options, progress=False, out=tmp_path / "run")
    charged = Usage(**{k: getattr(_usage(server), k) - getattr(before, k) for k in Usage.model_fields})
    spend = result.budget
    assert 0 < spend.queries <= 60
    assert (charged.queries, charged.image_evals, charged.image_forwards) == (
        spend.total_queries, spend.image_evals, spend.image_forwards)
    task = resolve_task("animals", SHOTS, SEED)
    sizes = {split: len(getattr(task, split)) for split in ("train", "val", "test")}
    assert spend.image_forwards == _forwards_in_log(tmp_path / "run", sizes)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["prompt"] == "visual"
    assert config["prompt_space"]["visual_dim"] == 8 and config["prompt_space"]["visual_spread"] > 0


def test_joint_cli_run_stays_within_budget_records_kind_and_split_and_resumes_only_as_joint(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    budget = 160
    run = tmp_path / "run"
    command = [SHARPZO, "tune", "--server", server.url, "--out", str(run), "--dataset", "animals", "--shots",
               str(SHOTS), "--seed", str(SEED), "--method", "sharpzo", "--budget", str(budget), "--dim", "8",
               "--opt", "sharpness=cge", "--opt", "popsize=6", "--opt", "switch_iterations=2", "--opt",
               "mask_interval=20", "--eval-every", "60", "--no-progress", "--prompt", "joint", "--visual-dim", "3"]
    before = _usage(server)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _usage(server)
    result = json.loads((run / "result.json").read_text())
    assert budget - 22 < result["queries"] <= budget  # stage 1 costs 2d + S = 22 queries an iteration
    assert "zo" in [line["stage"] for line in log_lines(run)]
    spend = result["budget"]
    assert after.image_forwards - before.image_forwards == spend["image_forwards"] > 0
    assert after.queries - before.queries == spend["total_queries"]
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["prompt"] == "joint" and config["settings"]["visual_dim"] == 3
    space = config["prompt_space"]
    assert (space["kind"], space["text_dim"], space["visual_dim"], space["visual_tokens"]) == ("joint", 5, 3, 4)
    assert str(np.load(run / "prompt.npz")["prompt"]) == "joint"
    other = subprocess.run([*command[:-4], "--resume"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "other settings" in other.stderr, other.stderr


def test_visual_requests_split_by_the_servers_image_forwards(server: EmbeddedServer) -> None:
    """A known set without stems is uploaded again with visual; 60 candidates on 20 images are two requests."""
    task = resolve_task("animals", SHOTS, SEED)
    index = UploadIndex()
    charges: list[Usage] = []

    async def score() -> Scored:
        async with ApiClient(server.url) as api:
            plain = await upload_split(api, task.train, index=index)
            remote = await upload_split(api, task.train, index=index, visual=True)
            assert remote.set_id == plain.set_id and remote.stem_spread is not None and remote.stem_spread > 0
            p0 = await api.token_embeddings("a photo of a")
            visual = np.random.default_rng(0).normal(0, remote.stem_spread, size=(60, 2, VISUAL_WIDTH))
            return await api.score(remote.set_id, task.class_names, p0[None], labels=remote.labels,
                                   visual_prompts=visual.astype(np.float32), on_charge=charges.append)

    scored = asyncio.run(score())
    assert scored.loss is not None and len(scored.loss) == 60 and len(set(scored.loss.tolist())) > 1
    assert sorted(c.image_forwards for c in charges) == [200, MAX_FORWARDS]
