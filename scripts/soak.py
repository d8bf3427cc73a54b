"""Soak test: a long task-free stream on a tiny model, with resident memory sampled along the way.

Trains a tiny MLP with online MAS (default label-free detector, checkpoints every
``checkpoint_every`` steps) on a permuted-digits stream of at least 200,000 steps, and reports the
resident set size (RSS) after warm-up and at the end, its maximum drift, the consolidation count and
the throughput. Results go to ``OUT/soak.json`` and are printed.

Run::

    python scripts/soak.py                      # 200,000 steps, a few minutes on one core
    python scripts/soak.py --steps 20000        # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import online_mas as om
import streams


@dataclass
class SoakConfig:
    steps: int = 200_000  # training steps (batches)
    batch_size: int = 8  # samples per batch
    n_segments: int = 10  # permutations in the stream
    lam: float = 1e-3  # MAS penalty strength
    warmup: int = 10_000  # RSS is compared from this step on
    sample_every: int = 5_000  # steps between RSS samples
    checkpoint_every: int = 50_000  # steps between atomic checkpoints
    threads: int = 1  # torch threads
    seed: int = 0  # stream and model seed
    out: str = "runs/soak"  # output folder


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc), or the peak if /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(cfg: SoakConfig) -> dict[str, object]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = streams.make_stream("permuted-digits", n_segments=cfg.n_segments, passes=1,
                                batch_size=cfg.batch_size, seed=cfg.seed)
    passes = cfg.steps / len(probe) * 1.01  # segment lengths round to whole batches: overshoot
    stream = streams.make_stream("permuted-digits", n_segments=cfg.n_segments, passes=passes,
                                 batch_size=cfg.batch_size, seed=cfg.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mas = om.OnlineMAS(model, cfg.lam)
    samples: list[tuple[int, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=min(cfg.steps, len(stream)), unit="step", smoothing=0.05)
    for step, (x, y) in enumerate(stream, start=1):
        if step > cfg.steps:
            break
        loss = F.cross_entropy(model(x), y) + mas.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mas.observe(x)
        if step % cfg.sample_every == 0:
            samples.append((step, rss_mib()))
            bar.set_postfix(rss_mib=f"{samples[-1][1]:.1f}", snapshots=len(mas.events))
        if step % cfg.checkpoint_every == 0:
            om.checkpoint.save({"model": model.state_dict(), "mas": mas.state_dict(),
                                "stream": stream.state_dict()}, out / "checkpoint.pt")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    after = [r for s, r in samples if s >= cfg.warmup]
    base = after[0]
    result = {
        "config": asdict(cfg),
        "steps": min(cfg.steps, len(stream)),
        "seconds": round(elapsed, 1),
        "steps_per_second": round(min(cfg.steps, len(stream)) / elapsed, 1),
        "samples_per_second": round(min(cfg.steps, len(stream)) * cfg.batch_size / elapsed, 1),
        "rss_mib_after_warmup": round(base, 1),
        "rss_mib_end": round(after[-1], 1),
        "rss_max_drift_percent": round(100 * max(abs(r - base) for r in after) / base, 2),
        "consolidations": len(mas.events),
        "skipped_batches": mas.n_skipped,
        "rss_samples": samples,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("rss_samples", "config")}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in asdict(SoakConfig()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    main(SoakConfig(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args()).items()}))
