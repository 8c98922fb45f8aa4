"""Accuracy of factorized-binary networks against the XNOR-Net baseline (issue 4 evidence).

For each dataset and seed: train a real CNN, then convert it with every method (binary
weights and activations, first and last layer real) and fine-tune each for the same number
of epochs by distillation + cross-entropy. Rows: the real model; ``none`` + ``analytic``
(XNOR-Net); ``none`` + ``channel`` and ``none`` + ``xnorpp`` (the learned scales without a
factorization); ``matrix``/``tucker``/``cp`` with ``channel`` and ``xnorpp`` scales (with
the default dense residual); Tucker + ``xnorpp`` without the residual (ablation). Prints
mean and spread over seeds, the training step time relative to ``none``, and writes a
PNG (accuracy per method; accuracy against rank on one dataset).

Datasets (no download): scikit-learn's ``digits`` (8x8) and ``shapes``, generated here:
16x16 images of ten shape classes at random positions, sizes and contrasts, with a
background gradient and noise, so binarization visibly costs accuracy.

    .venv/bin/python bench/accuracy.py                   # the full table (~15 min, 1 thread)
    .venv/bin/python bench/accuracy.py --seeds 1 --quick # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitfactor.jobconfig import BinarizeConfig  # noqa: E402
from engine.archs import VGGSmall  # noqa: E402
from engine.convert import convert  # noqa: E402
from engine.train import predict, train  # noqa: E402

METHODS: list[tuple[str, str, str, bool]] = [
    ("none+analytic (XNOR-Net)", "none", "analytic", False),
    ("none+channel", "none", "channel", False),
    ("none+xnorpp", "none", "xnorpp", False),
    ("matrix+channel", "matrix", "channel", True),
    ("matrix+xnorpp", "matrix", "xnorpp", True),
    ("tucker+channel", "tucker", "channel", True),
    ("tucker+xnorpp", "tucker", "xnorpp", True),
    ("cp+channel", "cp", "channel", True),
    ("cp+xnorpp", "cp", "xnorpp", True),
    # ablation: the factors alone (no dense residual), the paper's plain parametrization
    ("tucker+xnorpp, no residual", "tucker", "xnorpp", False),
]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return (x - 0.3) / 0.4, d.target.astype(np.int64)


def shapes(n: int = 2400, size: int = 12, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Ten shape classes, random placement/scale/contrast, gradient background, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xs = np.empty((n, 1, size, size), np.float32)
    ys = rng.integers(0, 10, n)
    for i, c in enumerate(ys):
        cx, cy = rng.uniform(3.5, size - 3.5, 2)
        r = rng.uniform(2.0, 3.5)
        dx, dy = xx - cx, yy - cy
        ax, ay = np.abs(dx), np.abs(dy)
        t = 1.0
        masks = [
            (ax <= r) & (ay <= r),  # filled square
            ((ax <= r) & (ay <= r)) & ~((ax <= r - t - 0.5) & (ay <= r - t - 0.5)),  # frame
            dx**2 + dy**2 <= r**2,  # disc
            np.abs(np.sqrt(dx**2 + dy**2) - r + 0.5) <= 0.8,  # ring
            (dy <= r) & (dy >= -r) & (ax <= (dy + r) / 2),  # triangle up
            (dy <= r) & (dy >= -r) & (ax <= (r - dy) / 2),  # triangle down
            (ax <= r) & (ay <= 0.9),  # horizontal bar
            (ay <= r) & (ax <= 0.9),  # vertical bar
            ((ax <= r) & (ay <= 0.8)) | ((ay <= r) & (ax <= 0.8)),  # plus
            (np.abs(dx - dy) <= 1.0) & (ax <= r) | (np.abs(dx + dy) <= 1.0) & (ax <= r),  # X
        ]
        contrast = rng.uniform(0.6, 1.4) * rng.choice([-1.0, 1.0])
        gx, gy = rng.normal(0, 0.04, 2)
        img = masks[c].astype(np.float32) * contrast + gx * dx + gy * dy
        img += rng.normal(0, 0.3, (size, size)).astype(np.float32)
        xs[i, 0] = img
    return xs, ys.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    test, trainval = order[:n_test], order[n_test:]
    return tuple(torch.from_numpy(a) for a in (x[trainval], y[trainval], x[test], y[test]))


def model_for(name: str) -> nn.Module:
    if name == "digits":
        return VGGSmall(in_channels=1, num_classes=10, widths=(32, 64), image_size=8)
    return VGGSmall(in_channels=1, num_classes=10, widths=(16, 32), image_size=12)


def train_real(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) * 100


def run_method(
    teacher: nn.Module,
    data: tuple[torch.Tensor, ...],
    factorization: str,
    scales: str,
    epochs: int,
    seed: int,
    rank: float = 1.0,
    residual: bool = True,
) -> tuple[float, float]:
    x, y, xt, yt = data
    cpu = torch.device("cpu")
    config = BinarizeConfig(
        factorization=factorization,
        scales=scales,
        rank=rank,  # type: ignore[arg-type]
        residual=residual,
        epochs=epochs,
        lr=4e-2,  # chosen on a validation split (see docs/engine.md, "Recipe")
        batch_size=128,
        seed=seed,
        distill_weight=0.5,
        distill_temperature=2.0,
        min_layer_size=0,
        device="cpu",
    )
    torch.manual_seed(seed)
    student, _ = convert(teacher, x[torch.randperm(len(x))[:512]], config)
    state = train(
        student,
        x=x,
        y=y,
        teacher_logits=predict(teacher, x, cpu),
        x_val=xt[:0],
        y_val=None,
        teacher_val_logits=torch.zeros(0),
        config=config,
        device=cpu,
    )
    return acc(predict(student, xt, cpu), yt), state.step_seconds or float("nan")


def step_times(
    teacher: nn.Module, data: tuple[torch.Tensor, ...], repeats: int = 30
) -> dict[str, float]:
    """Median seconds of one training step per method, the methods interleaved step by step
    so that load from other processes hits them alike."""
    x, y = data[0], data[1]
    students = {}
    for label, fac, sc, residual in METHODS:
        config = BinarizeConfig(
            factorization=fac,  # type: ignore[arg-type]
            scales=sc,  # type: ignore[arg-type]
            residual=residual,
            min_layer_size=0,
        )
        torch.manual_seed(0)
        student, _ = convert(teacher, x[:256], config)
        students[label] = (student.train(), torch.optim.AdamW(student.parameters(), 1e-4))
    batch_x, batch_y = x[:128], y[:128]
    samples: dict[str, list[float]] = {k: [] for k in students}
    for rep in range(repeats + 2):
        for label, (student, opt) in students.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(student(batch_x), batch_y).backward()
            opt.step()
            if rep >= 2:
                samples[label].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="fewer methods")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "accuracy.png"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "accuracy.json"))
    args = parser.parse_args()
    # One thread by default: on a shared 2-core machine two OpenMP threads per process
    # spin against other processes' threads (measured 7x slower per step under load).
    torch.set_num_threads(args.threads)
    datasets = {"digits": digits(), "shapes": shapes()}
    methods = [METHODS[0], METHODS[1], METHODS[4]] if args.quick else METHODS
    results: dict[str, dict[str, list[float]]] = {}
    started = time.time()
    teachers = {}
    for dname, (x_all, y_all) in datasets.items():
        results[dname] = {"real": []}
        for seed in range(args.seeds):
            data = split(x_all, y_all, seed)
            torch.manual_seed(seed)
            teacher = model_for(dname)
            train_real(teacher, data[0], data[1], epochs=args.teacher_epochs, seed=seed)
            teachers[(dname, seed)] = (teacher, data)
            results[dname]["real"].append(
                acc(predict(teacher, data[2], torch.device("cpu")), data[3])
            )
            for label, fac, sc, residual in methods:
                a, _ = run_method(teacher, data, fac, sc, args.epochs, seed, residual=residual)
                results[dname].setdefault(label, []).append(a)
                print(
                    f"[{time.time() - started:6.0f}s] {dname} seed {seed} {label:26s} {a:6.2f}%",
                    flush=True,
                )
    times = {d: step_times(*teachers[(d, 0)]) for d in datasets}
    ranks = [0.1, 0.25, 0.5, 1.0]
    rank_curve: dict[str, list[float]] = {}
    teacher, data = teachers[("shapes", 0)]
    for fac in ("matrix",):
        for r in ranks:
            a, _ = run_method(teacher, data, fac, "channel", args.epochs, 0, rank=r)
            rank_curve.setdefault(fac, []).append(a)
            print(f"[{time.time() - started:6.0f}s] shapes rank {r} {fac}: {a:.2f}%", flush=True)

    print(
        f"\nTest accuracy (%), mean ± std over {args.seeds} seeds, {args.epochs} epochs "
        "each; step time relative to none+channel"
    )
    header = (
        f"{'method':28s}"
        + "".join(f"{d:>22s}" for d in results)
        + "  step time / none+channel (per dataset)"
    )
    print(header)
    print("-" * len(header))
    for label in results["digits"]:
        row = f"{label:28s}"
        for d in results:
            vals = results[d][label]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row += f"{statistics.mean(vals):14.2f} ± {sd:5.2f}"
        if label != "real":
            ratios = [times[d][label] / times[d]["none+channel"] for d in times]
            row += "".join(f"{r:7.2f}" for r in ratios)
        print(row)
    print("\nshapes, seed 0, channel scales, accuracy (%) against rank fraction")
    for fac, vals in rank_curve.items():
        print(
            f"  {fac:8s}" + "".join(f"  r={r}: {v:6.2f}" for r, v in zip(ranks, vals, strict=True))
        )
    Path(args.json).write_text(
        json.dumps(
            {
                "results": results,
                "step_seconds": times,
                "rank_curve": rank_curve,
                "ranks": ranks,
                "epochs": args.epochs,
                "seeds": args.seeds,
            },
            indent=1,
        )
    )
    plot(results, rank_curve, ranks, args.out)
    print(f"\nwrote {args.out} and {args.json} in {time.time() - started:.0f} s")


def plot(
    results: dict[str, dict[str, list[float]]],
    rank_curve: dict[str, list[float]],
    ranks: list[float],
    out: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results) + 1, figsize=(6 * (len(results) + 1), 5))
    for ax, (dname, rows) in zip(axes, results.items(), strict=False):
        labels = list(rows)
        means = [statistics.mean(rows[k]) for k in labels]
        sds = [statistics.stdev(rows[k]) if len(rows[k]) > 1 else 0.0 for k in labels]
        ax.barh(range(len(labels)), means, xerr=sds, color=["grey"] + ["C0"] * (len(labels) - 1))
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(min(means) - 5, 100)
        ax.set_xlabel("test accuracy (%)")
        ax.set_title(dname)
        ax.invert_yaxis()
    ax = axes[-1]
    for fac, vals in rank_curve.items():
        ax.plot(ranks, vals, marker="o", label=fac)
    ax.set_xlabel("rank (fraction of full)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("shapes: accuracy against rank (channel scales)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
