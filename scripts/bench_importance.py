"""Cost of label-free MAS importance, as a multiple of one plain training step.

For an MLP 784-256-256-10 and a small CNN on 28x28 inputs, and (issue 16) a resnet18 on 3x32x32
(``torchvision.models.resnet18(num_classes=10)``, built locally), an ``nn.TransformerEncoderLayer``
(d 128, 4 heads, sequence 32), a GPT block built from ``nn.Linear`` (same sizes, causal), an LSTM and
a GRU (32 -> 128, sequence 32), each with a 10-class head, times ``om.importance`` with each method
(``exact``, ``vmap``, ``loop``, ``batch``) and a plain training step (forward, cross-entropy,
backward, SGD step) on the same model and batch, in one process, interleaved over many rounds;
measures the transient (peak) memory of one call of each; prints a markdown table of median
ratios and peaks, writes it as JSON and, with ``--results``, as markdown. On a machine with CUDA
the same models run there too (``--devices auto``), in a second table.

Peak memory: on the CPU, the most bytes PyTorch's allocator held during one call beyond what it
held when the call started (the running total of torch.profiler's memory events, so it sees
PyTorch's own allocations, which tracemalloc does not); on CUDA, ``torch.cuda.max_memory_allocated``
over the call minus the bytes allocated before it. Both include the call's result (the importance,
parameter-sized).

Run from the repository root (package installed with ``pip install -e .``, or ``PYTHONPATH=.``)::

    python scripts/bench_importance.py                       # MLP and CNN, all methods
    python scripts/bench_importance.py --threads 2 --rounds 50
    python scripts/bench_importance.py --models mlp --methods exact,vmap --out runs/bench_imp
    python scripts/bench_importance.py --models mlp,cnn,resnet18,transformer,gpt,lstm,gru \
        --methods exact --rounds 5 --results results/importance.md

Targets (issue 2): exact at least 10x faster than ``vmap`` on the MLP. Issue 16: exact <= 1.3x a
training step on the MLP, the small CNN, the transformer layer and the GPT block, resnet18 <= 2x,
LSTM and GRU <= 3x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _bench_models import (
    CLOCKS,
    MODELS,
    environment,
    interleaved,
    make_batch,
    markdown_table,
    paired_ratio,
    train_step,
    write_json,
)
from torch import Tensor, nn
from tqdm import tqdm

import online_mas as om

TARGETS = {"mlp": 1.3, "cnn": 1.3, "resnet18": 2.0, "transformer": 1.3, "gpt": 1.3, "lstm": 3.0,
           "gru": 3.0}  # exact / training step
D_MODEL, HEADS, SEQ, RNN_IN = 128, 4, 32, 32  # sequence models: width, heads, length, RNN input


class Sequence(nn.Module):
    """A sequence layer (``(B, T, d) -> (B, T, d)``, or an RNN's ``(output, state)``), the mean
    over positions (the last step for an RNN) and a 10-class head."""

    def __init__(self, body: nn.Module, width: int, *, last: bool = False) -> None:
        super().__init__()
        self.body, self.head, self.last = body, nn.Linear(width, 10), last

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.head(h[:, -1] if self.last else h.mean(1))


class GPTBlock(nn.Module):
    """Pre-norm causal self-attention and MLP, every projection an ``nn.Linear`` (nanoGPT's Block)."""

    def __init__(self, d: int = D_MODEL, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def resnet18() -> nn.Module:
    """torchvision's resnet18 with a 10-class head (no download)."""
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {  # model and one sample's shape
    "resnet18": (resnet18, (3, 32, 32)),
    "transformer": (lambda: Sequence(nn.TransformerEncoderLayer(D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0,
                                                                batch_first=True), D_MODEL), (SEQ, D_MODEL)),
    "gpt": (lambda: Sequence(GPTBlock(), D_MODEL), (SEQ, D_MODEL)),
    "lstm": (lambda: Sequence(nn.LSTM(RNN_IN, 128, batch_first=True), 128, last=True), (SEQ, RNN_IN)),
    "gru": (lambda: Sequence(nn.GRU(RNN_IN, 128, batch_first=True), 128, last=True), (SEQ, RNN_IN)),
}
ALL_MODELS = (*MODELS, *ZOO)


def model_and_batch(name: str, batch: int, seed: int, device: str = "cpu"
                    ) -> tuple[nn.Module, Tensor, Tensor]:
    """A seeded benchmark model, a batch of inputs and 10-class labels, on ``device``."""
    torch.manual_seed(seed)
    if name in MODELS:
        model, (x, y) = MODELS[name](), make_batch(batch, seed)
    else:
        make, shape = ZOO[name]
        g = torch.Generator().manual_seed(seed)
        model, x = make(), torch.randn(batch, *shape, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
    return model.to(device), x.to(device), y.to(device)


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Transient memory of one call of ``fn``: the peak bytes allocated during it beyond those
    allocated when it started (see the module docstring for how, per device)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    return int(max([0, *totals]))  # the running total starts at 0 with the profile


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronize on a CUDA device, so wall time covers its kernels."""
    if not device.startswith("cuda"):
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def devices(spec: str) -> tuple[str, ...]:
    """``"auto"``: the CPU, and CUDA where this machine has it; otherwise a comma-separated list."""
    if spec == "auto":
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return tuple(spec.split(","))
VMAP_SPEEDUP = 10.0  # exact at least this many times faster than vmap on the MLP


@dataclass
class Config:
    models: tuple[str, ...] = ("mlp", "cnn")  # benchmark models (see _bench_models.MODELS)
    methods: tuple[str, ...] = ("exact", "vmap", "loop", "batch")  # om.importance methods to time
    batch: int = 64  # samples per batch
    rounds: int = 30  # interleaved timing rounds (ratios are medians over rounds)
    block_ms: float = 20.0  # each function runs repeatedly for about this long per round
    threads: int = 1  # torch.set_num_threads
    clock: str = "cpu"  # "cpu" (process CPU time: robust on a shared machine) or "wall"
    seed: int = 0  # seed of the model and the batch
    out: str = "runs/bench_importance"  # run directory for the JSON
    results: str = ""  # also write the table as markdown here (e.g. results/importance.md); "" for none
    devices: tuple[str, ...] = ("cpu",)  # where to run (--devices auto: the CPU, and CUDA if present)


def bench_model(name: str, cfg: Config, device: str = "cpu") -> dict[str, object]:
    """Time the training step and every method on one model; ratios to the training step; the
    peak transient memory of one call of each."""
    model, x, y = model_and_batch(name, cfg.batch, cfg.seed, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    fns = {"train_step": synced(lambda: train_step(model, opt, x, y), device)}
    for method in cfg.methods:
        fns[method] = synced(lambda method=method: om.importance(model, x, method=method), device)
    clock = "wall" if device.startswith("cuda") else cfg.clock  # CPU time does not see the GPU's
    with tqdm(total=cfg.rounds, desc=f"{name} ({device})", unit="round") as bar:
        res, times = interleaved(fns, baseline="train_step", rounds=cfg.rounds, block_ms=cfg.block_ms,
                                 clock=clock, progress=bar.update)
    memory = {k: peak_bytes(fn, device) for k, fn in fns.items()}
    plan = om.plan(model, x)
    out: dict[str, object] = {"params": sum(p.numel() for p in model.parameters()), "timings": res,
                              "peak_bytes": memory, "device": device,
                              "torch_func_params": sorted(n for n, r in plan.items() if r == "torch.func")}
    if "exact" in res:
        out["target_exact_ratio"] = TARGETS.get(name)
        out["exact_meets_target"] = name in TARGETS and res["exact"]["ratio"] <= TARGETS[name]
        if "vmap" in res:
            out["vmap_over_exact"] = paired_ratio(times["vmap"], times["exact"])
    return out


def table(results: dict[str, dict[str, object]], methods: tuple[str, ...]) -> str:
    header = ["model", "train step (ms)", *[f"{m} / step" for m in methods],
              "peak MiB: step", *[f"{m}" for m in methods], "target", "torch.func params"]
    rows = []
    for name, r in results.items():
        t, slow, peak = r["timings"], r["torch_func_params"], r["peak_bytes"]
        assert isinstance(t, dict) and isinstance(slow, list) and isinstance(peak, dict)
        cells = [name, f"{t['train_step']['ms']:.2f}"]
        for m in methods:
            cells.append(f"{t[m]['ratio']:.2f}x ({t[m]['ratio_q1']:.2f}-{t[m]['ratio_q3']:.2f})")
        cells += [f"{peak[k] / 2**20:.1f}" for k in ("train_step", *methods)]
        target = TARGETS.get(name)
        cells.append(f"<= {target}x" if target is not None else "")
        cells.append(", ".join(f"`{n}`" for n in slow[:4]) + (f" (+{len(slow) - 4})" if len(slow) > 4 else "")
                     if slow else "none")
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Config()
    p.add_argument("--models", default=",".join(d.models), help=f"comma-separated: {','.join(ALL_MODELS)}")
    p.add_argument("--methods", default=",".join(d.methods), help="comma-separated om.METHODS")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--block-ms", type=float, default=d.block_ms)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--clock", choices=sorted(CLOCKS), default=d.clock)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    p.add_argument("--results", default=d.results, help="markdown file for the table (default: none)")
    p.add_argument("--devices", default="auto", help="comma-separated (cpu,cuda) or auto: the CPU, and CUDA "
                   "where this machine has it")
    a = p.parse_args(argv)
    cfg = Config(tuple(a.models.split(",")), tuple(a.methods.split(",")), a.batch, a.rounds,
                 a.block_ms, a.threads, a.clock, a.seed, a.out, a.results, devices(a.devices))
    unknown = [m for m in cfg.models if m not in ALL_MODELS] + [m for m in cfg.methods if m not in om.METHODS]
    if unknown:
        p.error(f"unknown models/methods {unknown}; models: {list(ALL_MODELS)}, methods: {om.METHODS}")
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    per_device = {dev: {name: bench_model(name, cfg, dev) for name in cfg.models} for dev in cfg.devices}
    first = cfg.devices[0]
    results = per_device[first]
    report: dict[str, object] = {
        "config": asdict(cfg),
        "environment": environment(cfg.threads),
        "seconds": time.time() - t0,
        "device": first,
        "results": results,
    }
    md = table(results, cfg.methods)
    report["table"] = md
    title = (f"importance cost / training step on {first}, batch {cfg.batch}, {cfg.threads} thread(s), "
             f"{'wall' if first.startswith('cuda') else cfg.clock} time, median of {cfg.rounds} interleaved "
             "rounds (interquartile range); peak transient memory of one call (MiB)")
    sections = [(title, md)]
    for dev in cfg.devices[1:]:
        dev_md = table(per_device[dev], cfg.methods)
        report[dev] = {"results": per_device[dev], "table": dev_md}
        name = torch.cuda.get_device_name() if dev.startswith("cuda") else dev
        sections.append((f"the same on {dev} ({name}), wall time with a synchronize after each call", dev_md))
    for head, body in sections:
        print(f"\n{head}\n")
        print(body)
    for name, r in results.items():
        if "exact_meets_target" in r:
            line = f"{name}: exact <= {r['target_exact_ratio']}x step: {r['exact_meets_target']}"
            if "vmap_over_exact" in r:
                line += f"; vmap / exact = {r['vmap_over_exact']:.1f}x"
                if name == "mlp":
                    line += f" (target >= {VMAP_SPEEDUP:.0f}x: {r['vmap_over_exact'] >= VMAP_SPEEDUP})"
            print(line)
    path = Path(cfg.out) / "bench_importance.json"
    write_json(path, report)
    print(f"wrote {path}")
    if cfg.results:
        env = report["environment"]
        assert isinstance(env, dict)
        command = "python scripts/bench_importance.py " + " ".join(argv if argv is not None else sys.argv[1:])
        tables = "\n\n".join(f"{head}:\n\n{body}" for head, body in sections)
        text = (f"# Importance cost\n\ntorch {env['torch']}, {env['processor']}. {tables}\n\n"
                f"`torch.func params`: parameters without a closed-form rule (`om.plan`), estimated by "
                f"torch.func (or a per-sample loop where vmap fails). Peak memory: on the CPU the most "
                f"bytes PyTorch's allocator held during one call beyond those it held at its start "
                f"(torch.profiler's memory events); on CUDA `torch.cuda.max_memory_allocated` over the "
                f"call minus the bytes allocated before it; both include the returned importance."
                f"\n\nWritten by `{command}` in {report['seconds']:.0f} s.\n")
        Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.results).write_text(text)
        print(f"wrote {cfg.results}")
    return report


if __name__ == "__main__":
    main()
