"""Train a factorized-binary ResNet a few epochs on CUDA (bf16 autocast) and on the CPU
with the same seed; print step times and both loss curves. Run by ``bench/gpu_check.sh``.

Self-contained: synthetic CIFAR-sized data labelled by a random real ResNet-20 (the
teacher), so nothing is downloaded. Finishes in well under 3 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitfactor.jobconfig import BinarizeConfig  # noqa: E402
from engine.archs import ResNetCIFAR  # noqa: E402
from engine.convert import convert  # noqa: E402
from engine.train import predict, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--cpu-samples", type=int, default=None, help="default: --samples (comparable curves)"
    )
    parser.add_argument("--factorizations", default="none,matrix,tucker,cp")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}", flush=True)
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}", flush=True)
    torch.manual_seed(0)
    teacher = ResNetCIFAR(depth=20, width=16, num_classes=10).eval()
    x = torch.randn(args.samples + 512, 3, 32, 32)
    cpu = torch.device("cpu")
    # A random teacher's argmax is nearly constant; centring its logits per class (a shift
    # of its last bias) spreads its labels over all classes, so the curves say something.
    last = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias -= predict(teacher, x, cpu).mean(0)
    y = predict(teacher, x, cpu).argmax(1)
    x_val, y_val, x, y = x[-512:], y[-512:], x[:-512], y[:-512]
    cpu_samples = args.cpu_samples or args.samples
    rows = []
    for fac in args.factorizations.split(","):
        config = BinarizeConfig(
            factorization=fac,  # type: ignore[arg-type]
            epochs=args.epochs,
            batch_size=256,
            lr=2e-3,
            seed=0,
            distill_weight=0.5,
        )
        t0 = time.perf_counter()
        student, _ = convert(teacher, x[:512], config)
        convert_s = time.perf_counter() - t0
        results = {}
        for name, device, n in (
            ("cuda", torch.device("cuda"), args.samples),
            ("cpu", cpu, cpu_samples),
        ):
            if device.type == "cuda" and not torch.cuda.is_available():
                continue
            model = copy.deepcopy(student)
            xs, ys = x[:n], y[:n]
            state = train(
                model,
                x=xs,
                y=ys,
                teacher_logits=predict(teacher, xs, cpu),
                x_val=x_val,
                y_val=y_val,
                teacher_val_logits=predict(teacher, x_val, cpu),
                config=config,
                device=device,
            )
            losses = [round(h["train_loss"], 4) for h in state.history]
            accs = [round(h.get("val_accuracy", float("nan")), 4) for h in state.history]
            step_ms = (state.step_seconds or float("nan")) * 1e3
            results[name] = step_ms
            print(
                f"{fac:7s} {name:4s} n={n:5d} step {step_ms:8.2f} ms  loss {losses}  "
                f"val acc {accs}",
                flush=True,
            )
        rows.append((fac, convert_s, results))
    print("\nfactorization  convert s  cuda step ms  cpu step ms  cpu/cuda  cuda step / none")
    base = rows[0][2].get("cuda")
    for fac, conv, res in rows:
        cuda_ms, cpu_ms = res.get("cuda", float("nan")), res.get("cpu", float("nan"))
        rel = cuda_ms / base if base else float("nan")
        print(
            f"{fac:13s} {conv:10.2f} {cuda_ms:13.2f} {cpu_ms:12.2f} {cpu_ms / cuda_ms:9.1f} "
            f"{rel:16.2f}"
        )


if __name__ == "__main__":
    main()
