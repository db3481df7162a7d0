"""Training throughput per model family: ``python -m nbutils.bench`` (or ``make bench``).

    python -m nbutils.bench [--profile cpu|gpu|tiny] [--repeats 3] [--steps 40] [--only MADE]

For every family, the model, loss, batch size and data view that a chapter trains in the
profile asked for are trained twice from the same seed: once by :func:`nbutils.train.fit`
(without a checkpoint file) and once by a **bare loop** that does nothing but the loss,
``zero_grad``, ``backward``, the AdamW step and the same learning-rate schedule. Both start
from identical weights and batches and end with identical weights (a unit test checks it), so
the ratio of their times is what ``fit`` itself costs per step: its loss read-out, progress
bar and bookkeeping. What ``fit`` does once at the start (the digests of the model, the loss
and the data that key its checkpoint) is timed on its own and reported as the start-up cost,
so that a short measurement does not spread it over its few steps.

Each measurement is repeated ``--repeats`` times (alternating the two loops, so that a
machine that slows down hurts both) and reported as the median with the spread (min to max).
The table goes to ``results/bench-<device>.json`` and ``.md``; the ``tiny`` profile is the
seconds-long configuration that ``make test`` runs.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from nbutils.runtime import bf16_supported, flush_subnormals, git_commit, machine, timed
from nbutils.runtime import device as default_device
from nbutils.train import _recorded, _schedule, adamw, fit


@dataclass(frozen=True)
class Case:
    """One family as a chapter trains it: ``build()`` -> model; ``loss(model, batch)``;
    ``data(device)`` -> a fresh :class:`nbutils.data.Batches`; ``batch`` rows per step."""

    name: str
    chapter: str
    build: Callable
    loss: Callable
    data: Callable
    batch: int
    lr: float = 1e-3
    conv: bool = False  # a convolutional net: the channels_last variant applies


#: What each variant changes: bfloat16 autocast of the forward pass and loss, and
#: channels_last memory format for convolutional nets (the GPU fast path).
VARIANTS = ("fp32", "bf16", "bf16+channels_last")


def _mnist_batches(transform, batch: int, n: int | None = None):
    """Batches of the MNIST training images (the first n) under a view, made on ``device``."""

    def make(device):
        from nbutils.data import Batches, load_mnist

        images, _ = load_mnist("train", download=True)
        return Batches(images[:n], batch_size=batch, transform=transform, seed=0, device=device)

    return make


def cases(profile: str) -> list[Case]:
    """The configurations the notebooks train in ``profile`` (``tiny``: a quick stand-in)."""
    from nbutils.autoregressive import FVSBN, NADE, nll_nats_per_image
    from nbutils.data import binarized, dequantized, grey_levels, symmetric
    from nbutils.flows import (
        Flow,
        StandardLogistic,
        checkerboard_partition,
        mlp_conditioner,
        nice,
        nll_nats_per_dim,
    )
    from nbutils.made import MADE
    from nbutils.nn import UNet
    from nbutils.pixelcnn import CategoricalPixelCNN, GatedPixelCNN, PixelCNN, nll_nats_per_pixel
    from nbutils.rectified import flow_matching_loss

    def size(cpu, gpu, tiny):
        return {"cpu": cpu, "gpu": gpu, "tiny": tiny}[profile]

    def nice_flow(hidden, depth):
        return lambda: Flow(
            nice((1, 28, 28), couplings=4, conditioner=mlp_conditioner(hidden, depth),
                 partition=checkerboard_partition),
            StandardLogistic(),
        )  # fmt: skip

    n = size(None, None, 2_000)  # the tiny profile reads a slice of the training set
    binary = nll_nats_per_image
    return [
        Case("FVSBN", "01", lambda: FVSBN(), binary,
             _mnist_batches(binarized, size(128, 256, 32), n), size(128, 256, 32), 5e-3),
        Case("NADE", "01", lambda: NADE(hidden=size(64, 500, 16)), binary,
             _mnist_batches(binarized, size(64, 256, 16), n), size(64, 256, 16), 4e-3),
        Case("MADE", "01",
             lambda: MADE(hidden=size((500,), (1000, 1000), (32,)),
                          num_masks=size(4, 8, 2), direct=True),
             binary, _mnist_batches(binarized, size(128, 512, 32), n), size(128, 512, 32), 3e-3),
        Case("PixelCNN", "01",
             size(lambda: PixelCNN(channels=16, layers=8),
                  lambda: GatedPixelCNN(channels=128, layers=10),
                  lambda: GatedPixelCNN(channels=8, layers=1)),
             binary, _mnist_batches(binarized, size(32, 128, 8), n), size(32, 128, 8), 2e-3, True),
        Case("PixelCNN-256", "01",
             lambda: CategoricalPixelCNN(channels=size(16, 64, 8), layers=size(3, 8, 1)),
             nll_nats_per_pixel, _mnist_batches(grey_levels, size(32, 256, 8), n),
             size(32, 256, 8), 2e-3, True),
        Case("NICE", "02", nice_flow(size(256, 1000, 64), size(3, 5, 2)), nll_nats_per_dim,
             _mnist_batches(dequantized, size(128, 256, 64), n), size(128, 256, 64), 3e-3),
        Case("rectified flow U-Net", "07",
             lambda: UNet(channels=size((16, 32, 32), (32, 64, 128), (8, 16, 16)),
                          attention=size(False, True, False)),
             flow_matching_loss, _mnist_batches(symmetric, size(64, 256, 16), n),
             size(64, 256, 16), 2e-3, True),
    ]  # fmt: skip


def bare_loop(model, loss_fn, batches, *, steps: int, lr: float, warmup: int = 0,
              autocast: torch.dtype | None = None, stamps: list | None = None) -> None:  # fmt: skip
    """The reference: loss, zero_grad, backward, AdamW step, schedule; nothing else.

    The same optimiser and learning-rate schedule as :func:`nbutils.train.fit`, so that both
    reach the same weights from the same start. ``stamps``, if given, receives the clock
    after every step (for :func:`subnormal_slowdown`; the CPU clock, so no GPU sync).
    """
    optimizer = adamw(model, lr=lr)  # fit's own optimiser (fused on CUDA)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, steps, warmup, True)
    )
    model.train()
    where = next(model.parameters()).device.type
    for batch in islice(batches, steps):
        with torch.autocast(where, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if stamps is not None:
            stamps.append(time.perf_counter())
    model.eval()


def _model(case: Case, variant: str, device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = case.build().to(device)
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
    return model


def default_variants(device) -> list[str]:
    """fp32 alone on the CPU and on GPUs without native bfloat16 (a T4), else every variant."""
    device = torch.device(device)
    if device.type == "cpu":
        return ["fp32"]
    if not bf16_supported(device):
        print(f"{device} has no native bfloat16: measuring fp32 only")
        return ["fp32"]
    return list(VARIANTS)


def measure(case: Case, *, steps: int, repeats: int, device, variant: str = "fp32") -> dict:
    """Median and spread of seconds per step for fit() and the bare loop, and their ratio."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant.startswith("bf16") and not bf16_supported(device):
        raise ValueError(
            f"variant {variant!r} needs native bfloat16, which {torch.device(device)} lacks (fit "
            "would train in float32 there, the bare loop in emulated bf16): measure 'fp32'"
        )
    autocast = torch.bfloat16 if variant.startswith("bf16") else None
    common = dict(steps=steps, lr=case.lr, autocast=autocast)
    times = {"fit": [], "bare": [], "start": []}
    # warm-up, untimed: first-call costs (kernel choice, lazy buffers)
    bare_loop(_model(case, variant, device), case.loss, case.data(device), **{**common, "steps": 2})
    for _ in range(repeats):
        for kind in ("bare", "fit"):
            model, batches = _model(case, variant, device), case.data(device)
            loop = bare_loop if kind == "bare" else functools.partial(fit, desc=case.name)
            run = functools.partial(loop, model, case.loss, batches, **common)
            total = timed(run, device)[1]
            if kind == "fit":  # the same start-up again, alone: what fit did before step 1
                model, batches = _model(case, variant, device), case.data(device)
                start = timed(functools.partial(_recorded, model, case.loss, batches), device)[1]
                times["start"].append(start)
                total -= start
            times[kind].append(total / steps)
    fit_s, bare_s = statistics.median(times["fit"]), statistics.median(times["bare"])
    return {
        "family": case.name,
        "variant": variant,
        "chapter": case.chapter,
        "batch": case.batch,
        "steps": steps,
        "repeats": repeats,
        "fit ms/step": 1000 * fit_s,
        "fit ms/step spread": [1000 * min(times["fit"]), 1000 * max(times["fit"])],
        "bare ms/step": 1000 * bare_s,
        "bare ms/step spread": [1000 * min(times["bare"]), 1000 * max(times["bare"])],
        "fit start-up s": statistics.median(times["start"]),
        "fit images/s": case.batch / fit_s,
        "bare images/s": case.batch / bare_s,
        "overhead (fit / bare)": fit_s / bare_s,
    }


SUBNORMAL_WINDOW = 100  # steps averaged at the start and at the end of the run


def _subnormal_run(case: Case, steps: int, device) -> tuple[float, float]:
    """Seconds per step over the first and the last :data:`SUBNORMAL_WINDOW` steps."""
    torch.manual_seed(0)
    model, batches = case.build().to(device), case.data(device)
    stamps = [time.perf_counter()]
    bare_loop(model, case.loss, batches, steps=steps, lr=case.lr, stamps=stamps)
    window = SUBNORMAL_WINDOW
    return (stamps[window] - stamps[0]) / window, (stamps[-1] - stamps[-1 - window]) / window


def subnormal_slowdown(profile: str, *, steps: int) -> dict:
    """ms/step of MADE's first and last steps of a ``steps``-step bare run, with subnormal
    floats kept and flushed (:func:`nbutils.runtime.flush_subnormals`).

    Each setting runs in a fresh process that sets it before any thread exists: the mode is
    a property of each CPU thread, and worker threads keep the mode they started with.
    """
    if steps < 2 * SUBNORMAL_WINDOW:
        raise ValueError(f"--subnormals needs at least {2 * SUBNORMAL_WINDOW} steps, got {steps}")
    out = {"family": "MADE", "steps": steps}
    for kind in ("kept", "flushed"):
        cmd = [sys.executable, "-m", "nbutils.bench", "--profile", profile,
               "--subnormal-child", kind, "--steps", str(steps)]  # fmt: skip
        first, last = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                text=True).stdout.splitlines()[-1])  # fmt: skip
        out[f"subnormals {kind}: ms/step, first {SUBNORMAL_WINDOW} steps"] = 1000 * first
        out[f"subnormals {kind}: ms/step, last {SUBNORMAL_WINDOW} steps"] = 1000 * last
    return out


def render_markdown(report: dict) -> str:
    head = (f"Training throughput, profile `{report['profile']}` on {report['device']} "
            f"({report['threads']} threads), commit {report['commit']}, {report['date']}. "
            "Median of the repeats, spread min-max in brackets.\n\n")  # fmt: skip
    lines = [
        "| family | variant | ch. | batch | fit ms/step | bare ms/step | fit images/s "
        "| fit / bare | fit start-up s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        fs, bs = r["fit ms/step spread"], r["bare ms/step spread"]
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['chapter']} | {r['batch']} "
            f"| {r['fit ms/step']:.2f} "
            f"[{fs[0]:.2f}-{fs[1]:.2f}] | {r['bare ms/step']:.2f} [{bs[0]:.2f}-{bs[1]:.2f}] | "
            f"{r['fit images/s']:.0f} | {r['overhead (fit / bare)']:.3f} | "
            f"{r['fit start-up s']:.3f} |"
        )
    text = head + "\n".join(lines) + "\n"
    sub = report.get("subnormals")
    if sub:
        text += f"\nSubnormal floats, {sub['family']}, {sub['steps']} steps of the bare loop:\n\n"
        text += "".join(f"- {k}: {v:.2f}\n" for k, v in sub.items() if k.startswith("subnormals"))
    return text


def _metrics(rows: list[dict], subnormals: dict | None) -> dict:
    metrics = {}
    for r in rows:
        name = f"{r['family']}, {r['variant']}"
        metrics[f"{name}: fit images/s"] = {"value": r["fit images/s"], "unit": "images/s"}
        metrics[f"{name}: fit / bare"] = {"value": r["overhead (fit / bare)"]}
    for key, value in (subnormals or {}).items():
        if key.startswith("subnormals"):
            metrics[key] = {"value": value, "unit": "ms/step"}
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.bench", description=__doc__)
    parser.add_argument("--profile", choices=("cpu", "gpu", "tiny"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--only", help="comma-separated family names")
    parser.add_argument(
        "--variants",
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: fp32 on the CPU and on GPUs "
        "without native bf16, all on the others)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--subnormals",
        type=int,
        default=0,
        metavar="STEPS",
        help="also time a MADE run of STEPS steps with subnormals kept and flushed",
    )
    parser.add_argument("--subnormal-child", choices=("kept", "flushed"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subnormal_child:  # first thing, before torch starts any worker thread
        flush_subnormals(args.subnormal_child == "flushed")
        made = next(c for c in cases(args.profile) if c.name == "MADE")
        print(json.dumps(_subnormal_run(made, args.steps, default_device())))
        return 0
    device = default_device()
    chosen = cases(args.profile)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = set(wanted) - {c.name for c in chosen}
        if unknown:
            raise SystemExit(
                f"unknown families {sorted(unknown)}; known: {[c.name for c in chosen]}"
            )
        chosen = [c for c in chosen if c.name in wanted]
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    variants = variants or default_variants(device)
    native = bf16_supported(device)
    refused = [v for v in variants if v not in VARIANTS or (v.startswith("bf16") and not native)]
    if refused:  # before measuring anything, so that no measured row is lost
        raise SystemExit(
            f"variants {refused} cannot run on {device}: known {list(VARIANTS)}, and bf16 "
            f"needs native support (native bf16 here: {native})"
        )
    rows = []
    for case, variant in ((c, v) for c in chosen for v in variants):
        if "channels_last" in variant and not case.conv:
            continue
        row = measure(case, steps=args.steps, repeats=args.repeats, device=device, variant=variant)
        rows.append(row)
        print(f"{case.name:<22} {variant:<19} fit {row['fit ms/step']:8.2f} ms/step, bare "
              f"{row['bare ms/step']:8.2f}, ratio {row['overhead (fit / bare)']:.3f}")  # fmt: skip
    subnormals = None
    if args.subnormals:
        subnormals = subnormal_slowdown(args.profile, steps=args.subnormals)
        print(subnormals)
    report = {
        "profile": args.profile,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": rows,
        "subnormals": subnormals,
        "metrics": _metrics(rows, subnormals),  # what notes quote with the measured role
    }
    name = f"bench-{device.type}" + ("-tiny" if args.profile == "tiny" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render_markdown(report))
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
