"""Every option of a tuning run, declared once: its default, its help text and its role.

``sharpzo tune``'s flags (``flags.py``) and the keyword arguments of ``tune()`` are built
from these fields. Roles: ``run`` options define the run (config.json records them and a
resume must repeat them), ``data`` options choose the images, ``session`` options say how
this process talks to the server and where it writes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .latency import Q_OPTION, parse_count
from .optim import OPTIMIZERS
from .prompt import DEFAULT_ALPHA, DEFAULT_INIT_TEXT
from .prompt_map import DEFAULT_VISUAL_ALPHA, PROMPT_KINDS, PromptKind, dims

Role = Literal["run", "data", "session"]
PRESETS_FILE = "presets.json"
LEAST_IN_FLIGHT = 10  # the default methods' 8 steps in flight and a monitor evaluation's 2 (an upload's chunks too)


def setting(default: Any, help: str, role: Role, **cli: Any) -> Any:
    """A field with its help text and role; ``cli`` holds what the flag needs beyond the type (env, choices)."""
    factory = dict if isinstance(default, dict) else None
    metadata = {"help": help, "role": role, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    method: str = setting("sharpzo", "optimiser", "run", choices=sorted(OPTIMIZERS))
    budget: int = setting(
        8000, "most queries the method may spend (training and validation queries); 0: evaluate the zero-shot prompt "
        "only", "run"
    )
    seed: int = setting(0, "seed of the few-shot draw, projection and optimiser", "run")
    prompt: PromptKind = setting(
        "text", "what w tunes: text (the context tokens), visual (VPT-shallow tokens of a ViT image tower, with the "
        "zero-shot text prompt) or joint (both from one w; client/prompt_map.py)", "run", type=str,
        choices=PROMPT_KINDS,
    )
    dim: int = setting(512, "dimension d of the tuned vector w", "run")
    visual_dim: int | None = setting(
        None, "--prompt joint: the last N of the --dim coordinates drive the visual prompt, the rest the text prompt "
        "(default dim // 2)", "run", metavar="N",
    )
    visual_tokens: int = setting(4, "m_v: visual prompt tokens, for --prompt visual and joint", "run")
    alpha: float = setting(DEFAULT_ALPHA, "projection scale in token-embedding spreads per unit of w", "run")
    visual_alpha: float = setting(
        DEFAULT_VISUAL_ALPHA, "--prompt visual and joint: the visual projection's scale, in the image tower's stem "
        "spreads per unit of w, so the visual tokens move at visual_alpha times (and learn at visual_alpha**2 times) "
        "the text prompt's rate (client/prompt_map.py; chosen on groceries validation)", "run",
    )
    init_text: str = setting(DEFAULT_INIT_TEXT, "text whose token embeddings are the initial prompt p0", "run")
    eval_every: int = setting(
        1000,
        "queries between validation/test evaluations of the current prompt, charged by the server but not against "
        "--budget; 0: none between the zero-shot and the final evaluation. The run returns the evaluated prompt "
        "(zero-shot, monitored or final) that is best on validation accuracy; on a tie the earlier one, so zero-shot "
        "wins ties",
        "run",
    )
    early_stop: int = setting(
        0,
        "stop after N --eval-every evaluations in a row without a validation improvement (decided at the next "
        "evaluation point, so a run stops at the same step whatever the network); 0: off",
        "run",
    )
    probe_sharpness: bool = setting(
        False,
        "measure sharpness (client/sharpness.py; 17 monitor queries each) at SharpZO's stage switch and at the end",
        "run",
    )
    augment: bool = setting(False, "encode training images with one random augmented view", "run")
    options: dict[str, Any] = setting({}, "optimiser options by name (--opt NAME=VALUE; see below)", "run")
    pipeline: str | None = setting(
        None, "steps of zo-sgd, sharpzo's stage 2 and spsa-gc in flight at once, each taken before the results of "
        "the P - 1 before it are in (a fixed staleness), so a far server's round trip is paid once per P steps; 1: "
        "the sequential method, without the derivative clip and with SharpZO's longer stage-2 step (25) unless "
        "--opt sets them; auto: chosen once at the start, 1 where the measured round trip is at most a quarter of a "
        "low estimate of a step's server time, else the method's own "
        "(client/latency.py; recorded in config.json as auto_chosen); unset: the method's own (8); an explicit "
        "--opt pipeline= wins", "run",
        metavar="auto|P",
    )
    directions: str | None = setting(
        None, "q: random directions per step of zo-sgd, sharpzo's stage 2 and spsa-gc (its pairs), sent as 2q "
        "candidates in one request, so a far server's round trip is paid once per 2q queries; auto: the least q "
        "that hides the round trip at --pipeline's P, chosen once at the start (client/latency.py; recorded in "
        "config.json); unset: the method's own default; an explicit --opt directions=/pairs= wins", "run",
        metavar="auto|Q",
    )
    shots: int = setting(16, "images per class in the training set", "data")
    test_data: Any = setting(
        None, "test images in the same forms as --data; by default a seeded part of what the k-shot draw leaves",
        "data", type=Path, metavar="PATH",
    )
    allow_fewer: bool = setting(False, "let classes with fewer than --shots images train on all they have", "data")
    server: str | None = setting(
        None, "URL of a SharpZO server; without one, an embedded server with the stand-in model starts on loopback",
        "session", env="SHARPZO_SERVER", metavar="URL",
    )
    api_key: str | None = setting(None, "API key", "session", env="SHARPZO_API_KEY", metavar="KEY")
    concurrency: int | None = setting(
        None, "requests in flight at once, over this whole client (default: the steps or generations in flight "
        f"that --pipeline or --opt set, plus a monitor evaluation's 2; at least {LEAST_IN_FLIGHT})", "session",
        metavar="N",
    )
    ca_bundle: str | None = setting(
        None, "PEM file (or folder) of CA certificates to trust for an https:// server, e.g. a private CA "
        "(SSL_CERT_FILE works too)", "session", env="SHARPZO_CA_BUNDLE", metavar="PEM",
    )
    compress: bool = setting(
        True, "gzip request bodies of 4 KB or more when the server offers it (/v1/model)", "session"
    )
    timeout: float = setting(
        120.0, "seconds of silence (connecting: at most 15) before a request is given up and retried with the same "
        "Idempotency-Key", "session",
    )
    out: Path | None = setting(
        None, "run directory (default runs/<data>-<method>-s<seed>)", "session", type=Path, metavar="DIR"
    )
    resume: bool = setting(False, "continue from the run directory's checkpoint", "session")
    progress: bool = setting(True, "show a progress bar", "session")

    def __post_init__(self) -> None:
        if self.method not in OPTIMIZERS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(OPTIMIZERS)}")
        OPTIMIZERS[self.method].config_type.from_options(self.options, owner=self.method)
        if self.prompt not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt {self.prompt!r}; choose one of {list(PROMPT_KINDS)}")
        if self.visual_dim is not None and self.prompt != "joint":
            raise ValueError(f"visual_dim splits w for --prompt joint; this run tunes {self.prompt} prompts")
        minimums = {"budget": 0, "eval_every": 0, "early_stop": 0, "dim": 1, "shots": 1, "concurrency": 1,
                    "visual_tokens": 1}
        for name, least in minimums.items():
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")
        dims(self.prompt, self.dim, self.visual_dim)
        for name in ("pipeline", "directions"):
            if getattr(self, name) is not None:
                parse_count(getattr(self, name), name)
                if self.method not in Q_OPTION:
                    raise ValueError(
                        f"--{name} counts the random-direction steps of {', '.join(sorted(Q_OPTION))}; {self.method} "
                        "has none (bbt's generations in flight are --opt pipeline=N)"
                    )
        if not self.alpha > 0 or not self.visual_alpha > 0:
            raise ValueError(f"alpha and visual_alpha must be positive, got {self.alpha} and {self.visual_alpha}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.early_stop and not self.eval_every:
            raise ValueError("early_stop needs eval_every > 0: it counts the --eval-every evaluations")

    @classmethod
    def build(cls, preset: str | None = None, **overrides: Any) -> TuneSettings:
        """Defaults, then ``preset``'s values, then ``overrides``; ``options`` are merged by name."""
        values = dict(load_preset(preset)) if preset is not None else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown tune option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        for name, value in overrides.items():
            values[name] = {**values.get("options", {}), **(value or {})} if name == "options" else value
        return cls(**values)

    def requests_in_flight(self) -> int:
        """``concurrency``, or room for the most steps or generations in flight the run was given (an explicit
        ``--opt pipeline=`` before ``--pipeline``, as latency.py takes them; an ``auto`` count chooses at most the
        method's own) and a monitor evaluation's val and test requests."""
        if self.concurrency is not None:
            return self.concurrency
        flag = None if self.pipeline is None else parse_count(self.pipeline, "pipeline")
        given = [self.options.get("pipeline", flag), self.options.get("stage1_pipeline")]
        return max([LEAST_IN_FLIGHT, *(count + 2 for count in given if isinstance(count, int))])

    def run_settings(self) -> dict[str, Any]:
        """The options that define the run: what config.json records and a resume compares."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["role"] == "run"}


def presets() -> dict[str, dict[str, Any]]:
    """Named, validated option sets from ``presets.json``: ``{name: {"help": ..., "settings": {...}}}``."""
    return _load_presets()


def load_preset(name: str) -> Mapping[str, Any]:
    table = presets()
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(table)}")
    return table[name]["settings"]


@lru_cache(maxsize=1)
def _load_presets() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = json.loads(resources.files(__package__).joinpath(PRESETS_FILE).read_text())
    for name, preset in table.items():
        try:
            TuneSettings(**preset["settings"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{PRESETS_FILE}: preset {name!r} is invalid: {exc}") from exc
    return table
