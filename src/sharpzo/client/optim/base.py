"""The ask/tell contract every client-side optimiser follows, and the one loop that drives it.

``opt.optimize(objective)`` runs ``a = opt.ask(); opt.tell(objective(a))`` until
``opt.stop()`` names a reason (pycma's ``interfaces.py`` manner). Every point in an
``Ask`` is one query, counted in ``spent`` when it is told: that is the client's one count
of the method's queries, and the budget is checked against it before each batch is sent.
The budget is given when the optimiser is made (``Optimizer.create`` or ``build_optimizer``),
so that plain ask/tell sees the same schedule as the loop (SharpZO's switch reads it).
``ask()`` returns the same batch until ``tell()``, so a batch that does not fit is declined
(``decline()`` may offer a cheaper one) without drawing anything. An optimiser is picklable
with all of its random state, so a checkpoint resumes the same trajectory bit for bit.

Pipelining (``depth`` > 1, the random-direction steps): ``asks()`` makes up to ``depth`` asks ahead,
each from the iterate as it stands, and they are told in the order they were made. Step t's
probes are then taken before the results of the ``depth - 1`` steps before it are in (a fixed
staleness), so a remote caller keeps ``depth`` requests in flight and waits one round trip per
``depth`` steps. The schedule depends on ``depth`` alone, never on when results arrive: ``optimize()``
runs the same trajectory with one request at a time as a client with ``depth`` in flight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from .config import OptimizerConfig

EvalSplit = Literal["train", "val"]
Info = dict[str, float | str]


@dataclass(frozen=True)
class Ask:
    points: np.ndarray  # (n, d) candidate w's to evaluate; each is one query
    split: EvalSplit = "train"  # "val": evaluate on the validation set


@dataclass(frozen=True)
class Evaluation:
    loss: np.ndarray  # (n,) mean cross-entropy per point on the requested split
    accuracy: np.ndarray  # (n,) top-1 accuracy per point


@dataclass(frozen=True)
class Probe:
    """What turns a random-direction ask's losses into a gradient estimate: its directions and probe length."""

    directions: np.ndarray  # (q, d)
    mu: float


@dataclass(frozen=True)
class Request:
    """An ask together with the budget line (``purpose``) its queries are booked under and, for a
    random-direction estimate, its ``probe`` (kept with the request, since several may be pending)."""

    ask: Ask
    purpose: str
    probe: Probe | None = None

    def probed(self) -> Probe:
        if self.probe is None:
            raise RuntimeError(f"a {self.purpose!r} request carries no probe")
        return self.probe


ConfigT = TypeVar("ConfigT", bound=OptimizerConfig)
Objective = Callable[[Ask], Evaluation]


OptimizerT = TypeVar("OptimizerT", bound="Optimizer[Any]")


class Optimizer(ABC, Generic[ConfigT]):
    name: ClassVar[str]
    config_type: ClassVar[type[OptimizerConfig]]
    budget: int | None = None  # the run's query cap, set by ``create``; None: no cap

    @classmethod
    def create(
        cls: type[OptimizerT], dim: int, seed: int = 0, config: OptimizerConfig | None = None, budget: int | None = None
    ) -> OptimizerT:
        """An optimiser for a run of at most ``budget`` queries (None: no cap).

        The budget is in place before ``__init__`` runs, so construction already sees it (SharpZO
        checks its switch there) while every subclass keeps the ``(dim, seed, config)`` signature.
        """
        optimizer = cls.__new__(cls)
        optimizer.budget = budget
        cls.__init__(optimizer, dim, seed, config)
        return optimizer

    def __init__(self, dim: int, seed: int = 0, config: ConfigT | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.config: ConfigT = config if config is not None else self.config_type()  # type: ignore[assignment]
        self.rng = np.random.default_rng(seed)
        self.iteration = 0
        self.spent: dict[str, int] = {}
        self.best_loss = float("inf")  # lowest train loss of any evaluated point
        self.best_point: np.ndarray | None = None
        self._queue: deque[Request] = deque()  # made and not yet told, oldest first

    @property
    def depth(self) -> int:
        """Asks in flight at once where the method can ask ahead (1: one at a time)."""
        return 1

    def ask(self) -> Ask:
        """The oldest ask not yet told (the pipeline filled first, as ``asks()``); the same until ``tell()``."""
        return self.asks()[0]

    def asks(self) -> list[Ask]:
        """Every ask not yet told, oldest first, after asking ahead up to ``depth`` while the method can
        (``_ahead_size``) and the asks fit the budget together. Tell them in this order."""
        if not self._queue:
            self._queue.append(self._request())
        while len(self._queue) < self.depth:
            size = self._ahead_size()
            pending = sum(len(request.ask.points) for request in self._queue)
            if size is None or (self.budget is not None and self.queries + pending + size > self.budget):
                break
            self._queue.append(self._request())
        return [request.ask for request in self._queue]

    def tell(self, result: Evaluation) -> None:
        """The result of the oldest ask not yet told."""
        if not self._queue:
            raise RuntimeError(f"{self.name}: tell() without a pending ask()")
        request = self._queue[0]
        n = len(request.ask.points)
        loss = np.asarray(result.loss, dtype=float)
        accuracy = np.asarray(result.accuracy, dtype=float)
        if loss.shape != (n,) or accuracy.shape != (n,):
            raise ValueError(f"{self.name}: expected {n} losses and accuracies, got {loss.shape} and {accuracy.shape}")
        self._queue.popleft()
        self.spent[request.purpose] = self.spent.get(request.purpose, 0) + n
        if request.ask.split == "train":
            self._track_best(request.ask.points, loss)
        self._absorb(request, Evaluation(loss, accuracy))

    def decline(self) -> bool:
        """The pending ask does not fit the caller's budget: True if a cheaper ask replaces it, False to stop."""
        return False

    def stop(self) -> dict[str, int]:
        """The termination conditions that hold now, by name (empty: go on), as pycma's ``stop()``.

        The pending batch must fit in ``budget - queries``; one that does not is declined, and a
        cheaper one tried, until one fits or the optimiser has none to offer.
        """
        if self.budget is None:
            return {}
        while self.queries + len(self.ask().points) > self.budget:
            if not self.decline():
                return {"budget": self.budget}
        return {}

    def rounds(self, limit: int | None = None) -> Iterator[Ask]:
        """The asks to evaluate one at a time (the oldest of ``asks()``), until ``stop()`` or ``limit`` rounds;
        tell each before the next."""
        done = 0
        while (limit is None or done < limit) and not self.stop():
            ask = self.ask()
            yield ask
            if self._queue and self._queue[0].ask is ask:
                raise RuntimeError(f"{self.name}: the ask was not told before the next round")
            done += 1

    def optimize(
        self, objective: Objective, rounds: int | None = None, callback: Callable[[Ask, Evaluation], None] | None = None
    ) -> Optimizer[ConfigT]:
        """Evaluate and tell until the next batch does not fit the budget (or ``rounds`` are done)."""
        for ask in self.rounds(rounds):
            result = objective(ask)
            self.tell(result)
            if callback is not None:
                callback(ask, result)
        return self

    @property
    def queries(self) -> int:
        """Queries told so far, over every purpose."""
        return sum(self.spent.values())

    @property
    @abstractmethod
    def solution(self) -> np.ndarray:
        """The current recommended w."""

    @property
    @abstractmethod
    def stage(self) -> str:
        """A short label for progress display."""

    def info(self) -> Info:
        out: Info = {
            "stage": self.stage,
            "iteration": self.iteration,
            "queries": self.queries,
            "best_loss": self.best_loss,
        }
        out.update({f"queries_{purpose}": count for purpose, count in self.spent.items()})
        out.update(self._details())
        return out

    @abstractmethod
    def _request(self) -> Request:
        """Build the next batch; called once per ask, so it may draw random numbers."""

    def _ahead_size(self) -> int | None:
        """The queries of the next ask if it may be made before the pending ones are told; None: it may not."""
        return None

    @abstractmethod
    def _absorb(self, request: Request, result: Evaluation) -> None:
        """Consume the evaluation of ``request`` (the oldest pending one)."""

    def _details(self) -> Info:
        return {}

    def _track_best(self, points: np.ndarray, loss: np.ndarray) -> None:
        i = int(np.argmin(loss))
        if loss[i] < self.best_loss:
            self.best_loss = float(loss[i])
            self.best_point = points[i].copy()
