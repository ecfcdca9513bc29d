"""Measured CPU latency: interleaved timing of models, and the search's latency preference.

A channel-pruned model is smaller *and* faster, but two allocations that spend the same
parameter (or MAC) budget can differ in speed: which layers keep their channels decides the
shapes the kernels run on. :class:`LatencySettings` (``search(latency=...)``, the study file's
``[latency]`` table) makes a study prefer the faster of its budget-filling models, by
measurement on the machine it runs on (latency does not depend on the weights, so untrained
shapes are timed):

1. **Seeds.** Once per study, before any training, the allocations the seed trials could start
   from (in ``"family"`` mode each heuristic at temperatures 0, 0.5 and 1 within
   ``space.alloc_temperature``: from uniform to the heuristic, never sharper; each heuristic
   otherwise) are masked on the dense model, compacted and timed against
   it. The seed trials are the fastest of them, fastest first, so a study whose compute pays
   for one trial trains the fastest budget-filling allocation it found. The timings are stored
   (study attribute ``latency_candidates``).
2. **Every trial** records its compacted model's latency relative to the dense model
   (trial attribute ``latency``, measured in the same interleaved rounds).
3. **The choice.** Where validation cannot tell models apart (within one binomial standard
   error of the best validation accuracy), the faster one goes on to the finalists, and is
   the final model (:func:`sparsesearch.fidelity.choose_final`).

Timings depend on the machine and its load, so a latency-preferring study's seeds can differ
between machines (and runs); a resumed study keeps the seeds it was created with.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping

import torch

from sparsesearch.errors import SparsesearchError, did_you_mean
from sparsesearch.options import option

__all__ = ["LatencySettings", "interleaved_latency", "latency_ratios"]


@dataclasses.dataclass(frozen=True)
class LatencySettings:
    """How a study measures and prefers latency (see the module's docstring).

    Attributes:
        prefer: prefer the faster model among those validation cannot tell apart, and seed
            the study with the fastest allocations (``False``: off, the default of a study).
        batch: batch size of the timed forward pass (``model(x)`` with ``x`` of ``batch``
            validation inputs).
        rounds: interleaved timing rounds (dense, candidate, dense, ...): more rounds, less
            noise, more time.
        min_run_time: seconds each model is run per round (``blocked_autorange``).
        threads: torch threads while timing (``None``: as set; 1 times what one core does,
            which varies least on a shared machine).
    """

    prefer: bool = option(True, kind="bool", doc=(
        "prefer faster models: the fastest budget-filling allocations seed the study, and the "
        "faster of models within validation noise is kept (default true once the table is given)"))
    batch: int = option(64, kind="int>=1", doc="batch size of the timed forward pass (default 64)")
    rounds: int = option(5, kind="int>=1", doc="interleaved timing rounds (default 5)")
    min_run_time: float = option(0.01, kind="number>0", doc=(
        "seconds each model runs per round, at least (default 0.01)"))
    threads: int | None = option(1, kind="int>=1", doc=(
        "torch threads while timing (default 1: what one core does, steadier on a shared machine)"))

    def __post_init__(self) -> None:
        if not isinstance(self.prefer, bool):
            raise SparsesearchError(f"latency prefer must be true or false, got prefer={self.prefer!r}")
        for name in ("batch", "rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparsesearchError(f"latency {name} must be an int >= 1, got {name}={v!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SparsesearchError(f"latency threads must be an int >= 1, got threads={self.threads!r}")
        if isinstance(self.min_run_time, bool) or not isinstance(self.min_run_time, (int, float)) \
                or not (math.isfinite(self.min_run_time) and self.min_run_time > 0):
            raise SparsesearchError(
                f"latency min_run_time must be a finite number > 0, got min_run_time={self.min_run_time!r}")

    @classmethod
    def from_mapping(cls, value: "LatencySettings | Mapping[str, Any] | bool | None") -> "LatencySettings | None":
        """``None``, ``False``, ``{}`` or ``prefer = false``: off (``None``); ``True``: the
        defaults; a mapping: its fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, LatencySettings):
            return value if value.prefer else None
        if isinstance(value, Mapping):
            if not value:
                return None
            valid = [f.name for f in dataclasses.fields(cls)]
            for key in value:
                if key not in valid:
                    raise SparsesearchError(f"unknown latency key {key!r}{did_you_mean(key, valid)}")
            settings = cls(**value)
            return settings if settings.prefer else None
        raise SparsesearchError(f"latency must be true, false or a table of settings, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def example(self, data: Any) -> torch.Tensor:
        """``batch`` inputs of ``data`` (a dataset of ``(x, y)``), repeated when it has fewer."""
        n = len(data)
        if n == 0:
            raise SparsesearchError("latency: the dataset to take the timed inputs from is empty")
        return torch.stack([torch.as_tensor(data[i % n][0]) for i in range(self.batch)]).float()


def interleaved_latency(models: dict[str, Any], example: Any, *, rounds: int = 5,
                        min_run_time: float = 0.05) -> dict[str, tuple[float, float, float]]:
    """Per model: ``(median, low quartile, high quartile)`` seconds of one ``model(example)``
    on the CPU (``torch.inference_mode``), measured with ``torch.utils.benchmark`` (adaptive
    ``blocked_autorange``) in ``rounds`` interleaved rounds (dense, compacted, dense, ...), so a
    change of machine load hits every model alike. The spread is over all measured blocks."""
    from torch.utils import benchmark  # imported on demand: only timing needs it

    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m.cpu().eval()(example)  # warm-up
        for _ in range(rounds):
            for name, m in models.items():
                t = benchmark.Timer(stmt="m(x)", globals={"m": m, "x": example},
                                    num_threads=torch.get_num_threads())
                times[name].extend(t.blocked_autorange(min_run_time=min_run_time).times)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[name] = (statistics.median(ts), q[0], q[2])
    return out


def latency_ratios(models: Mapping[str, torch.nn.Module], dense: torch.nn.Module, example: torch.Tensor,
                   settings: LatencySettings) -> dict[str, float]:
    """Each model's latency over the dense model's (lower quartiles of the timed blocks), timed
    in the same interleaved rounds (CPU, ``settings.threads`` torch threads). The models are put in eval mode; a
    model in training mode is put back into it afterwards."""
    if "dense" in models:
        raise ValueError(f"'dense' is the reference's name, not a candidate's: {sorted(models)=}")
    nets = {"dense": dense, **models}
    modes = {k: m.training for k, m in nets.items()}
    devices = {k: next(iter(m.parameters()), torch.empty(0)).device for k, m in nets.items()}
    threads = torch.get_num_threads()
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        lat = interleaved_latency(nets, example.cpu(), rounds=settings.rounds,
                                  min_run_time=settings.min_run_time)
    finally:
        torch.set_num_threads(threads)
        for k, m in nets.items():
            m.to(devices[k]).train(modes[k])
    # the lower quartiles: other load only ever adds time, so the least disturbed blocks say
    # most about the model itself
    return {k: lat[k][1] / lat["dense"][1] for k in models}
