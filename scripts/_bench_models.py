"""What the two benchmark scripts share: the benchmark models, the interleaved timer, the table.

Not a script. ``scripts/bench_importance.py`` and ``scripts/bench.py`` import it (Python puts the
script's folder on ``sys.path``), so both time the same MLP and CNN the same way.

Timing on a shared machine is noisy, so nothing here reports a single wall-clock figure: every
measured function runs in each of many *rounds*, in an order that rotates from round to round, and a
ratio is taken inside each round (the function against the baseline measured moments before or
after it). The reported ratio is the median of the per-round ratios, with its interquartile range.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp() -> nn.Module:
    """MLP 784-256-256-10 on 28x28 inputs."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    """Small CNN on 28x28 inputs: conv(1->16) pool conv(16->32) pool linear(1568->10), 3x3 kernels."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "cnn": cnn}


def make_batch(batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded batch of 28x28 single-channel inputs and 10-class labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """The baseline: forward, cross-entropy, backward, optimizer step."""
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
"""``cpu``: CPU time of this process (all its threads), which time slices lost to other processes
on a shared machine do not inflate; ``wall``: elapsed time."""


def _calls_per_block(fn: Callable[[], object], block_ms: float) -> int:
    """How many calls of ``fn`` fill about ``block_ms`` milliseconds (at least 1)."""
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    return max(1, round(block_ms / 1e3 / max(once, 1e-7)))


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    baseline: str,
    rounds: int,
    warmup: int = 3,
    block_ms: float = 20.0,
    clock: str = "cpu",
    steps: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Time every function in ``rounds`` rounds in rotating order; ratios to ``baseline`` per round.

    Returns a summary and the raw times. The summary has, per name, ``ms`` (median time per call),
    ``ratio`` (median over rounds of the function's time per call divided by the baseline's in the
    same round), ``ratio_q1``/``ratio_q3`` (quartiles of those ratios), ``calls`` (calls per round)
    and ``rounds``. The raw times are seconds per step, one per round, per name. ``clock`` is a key
    of :data:`CLOCKS`. ``steps[name]`` says how many steps one call of ``fns[name]`` makes (default
    1); its times are per step.
    """
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {sorted(fns)}")
    now = CLOCKS[clock]
    per_call = {name: (steps or {}).get(name, 1) for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls = {name: _calls_per_block(fn, block_ms) for name, fn in fns.items()}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, k = fns[name], calls[name]
            t = now()
            for _ in range(k):
                fn()
            times[name].append((now() - t) / (k * per_call[name]))
        if progress is not None:
            progress(1)
    result = {}
    for name in names:
        ratios = [a / b for a, b in zip(times[name], times[baseline], strict=True)]
        result[name] = {
            "ms": statistics.median(times[name]) * 1e3,
            "ratio": statistics.median(ratios),
            "ratio_q1": _quantile(ratios, 0.25),
            "ratio_q3": _quantile(ratios, 0.75),
            "calls": float(calls[name]),
            "steps_per_call": float(per_call[name]),
            "rounds": float(rounds),
        }
    return result, times


def paired_ratio(times_a: list[float], times_b: list[float]) -> float:
    """Median over rounds of ``a / b`` (both timed in the same rounds)."""
    return statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=4, method="inclusive")[round(q * 4) - 1]


def environment(threads: int) -> dict[str, object]:
    """What the numbers depend on: versions, threads, CPU."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
