"""CLI commands of the engine: ``binarize``, ``eval`` and ``inspect``.

torch is imported inside ``binarize`` only; ``eval`` and ``inspect`` run packed files with
``runtime`` and need no torch. Flags are a contract other tools script against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def _parse_rank(text: str) -> float | list[int]:
    if "," in text:
        return [int(v) for v in text.split(",") if v.strip()]
    value = float(text)
    if value > 1 and value.is_integer():
        return [int(value)]
    return value


def binarize(
    model_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="ONNX, safetensors or .pt"
    ),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="Training .npz"),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Where to write the .bfm"),
    val: Path | None = typer.Option(
        None,
        "--val",
        exists=True,
        dir_okay=False,
        help="Validation .npz (default: a split of --data)",
    ),
    arch: str | None = typer.Option(None, "--arch", help="Built-in architecture of a state dict"),
    arch_kwargs: str | None = typer.Option(None, "--arch-kwargs", help="JSON kwargs of --arch"),
    factorization: str = typer.Option("matrix", "--factorization", help="none|matrix|tucker|cp"),
    rank: str = typer.Option("1.0", "--rank", help="Fraction of full rank, or ranks 'r1,r2,..'"),
    scales: str = typer.Option("channel", "--scales", help="analytic|channel|xnorpp"),
    epochs: int = typer.Option(10, "--epochs", help="0 converts and exports without training"),
    lr: float = typer.Option(1e-2, "--lr", help="AdamW learning rate (BinarizeConfig.lr)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda"),
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="Save every epoch; resume from the latest"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
) -> None:
    """Turn a pretrained model into a factorized-binary .bfm (convert, distill, export)."""
    from pydantic import ValidationError

    from bitfactor.jobconfig import BinarizeConfig, Progress

    try:
        config = BinarizeConfig(
            factorization=factorization,  # type: ignore[arg-type]
            rank=_parse_rank(rank),
            scales=scales,  # type: ignore[arg-type]
            epochs=epochs,
            lr=lr,
            seed=seed,
            device=device,  # type: ignore[arg-type]
        )
        kwargs = json.loads(arch_kwargs) if arch_kwargs else None
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    from engine.errors import UserInputError
    from engine.pipeline import binarize as run_binarize

    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=as_json,
        transient=False,
    )
    task = bar.add_task("converting", total=None, info="")

    def on_progress(p: Progress) -> None:
        info = f"loss {p.loss:.4f}" if p.loss is not None else ""
        if "val_accuracy" in p.metrics:
            info += f" val acc {p.metrics['val_accuracy']:.4f}"
        desc = {"train": "training", "binary": "training", "real_weights": "stage 1"}.get(
            p.stage, p.stage
        )
        bar.update(task, total=p.total_steps or None, completed=p.step, description=desc, info=info)

    def on_log(message: str) -> None:
        if not as_json:
            bar.console.print(message)

    try:
        with bar:
            result = run_binarize(
                model_file,
                data,
                out,
                config,
                arch=arch,
                arch_kwargs=kwargs,
                val_path=val,
                progress=on_progress,
                checkpoint_dir=checkpoint_dir,
                log=on_log,
            )
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    data_out = result.model_dump(exclude={"layers", "history"})
    if as_json:
        typer.echo(json.dumps(data_out, indent=2))
        return
    for key in (
        "real_accuracy",
        "binary_accuracy",
        "agreement",
        "runtime_agreement",
        "trained_agreement",
        "real_dtype",
        "compression_ratio",
        "ms_real",
        "ms_binary",
        "out_path",
        "sha256",
    ):
        value = data_out[key]
        typer.echo(f"{key:18s} {value:.4f}" if isinstance(value, float) else f"{key:18s} {value}")


def evaluate(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="A .bfm file"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="Test .npz with y"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Accuracy of a packed model on labelled data, run by the runtime (no torch)."""
    import numpy as np

    import runtime
    from bitfactor.datasets import load_npz

    try:
        packed = runtime.load(str(model))
        x, y = load_npz(data)
        if y is None:
            raise ValueError(f"{data.name}: expected labels 'y' to measure accuracy")
        outs = [np.asarray(packed.run(x[i : i + 256])) for i in range(0, len(x), 256)]
    except ValueError as exc:  # FormatError and data errors are ValueErrors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logits = np.concatenate(outs)
    acc = float((logits.argmax(1) == y).mean())
    if as_json:
        typer.echo(json.dumps({"accuracy": acc, "n": len(y)}))
    else:
        typer.echo(f"accuracy {acc:.4f} on {len(y)} inputs")


def describe_bfm(path: Path) -> dict[str, Any]:
    """Layers (op, name, binary or not, bytes), inputs/outputs and provenance of a .bfm."""
    from runtime.bfm import read_bfm

    graph, tensors, meta = read_bfm(path)
    layers = []
    for node in graph["nodes"]:
        names = list((node.get("params") or {}).values())
        layers.append(
            {
                "name": node["name"],
                "op": node["op"],
                "binary": node["op"] in ("bconv2d", "bconv1d", "blinear", "sign_pack"),
                "bytes": int(sum(tensors[n].nbytes for n in names)),
            }
        )
    return {
        "file_bytes": path.stat().st_size,
        "inputs": graph["inputs"],
        "outputs": graph["outputs"],
        "binary_layers": sum(
            1 for n in graph["nodes"] if n["op"] in ("bconv2d", "bconv1d", "blinear")
        ),
        "layers": layers,
        "provenance": meta.get("provenance", {}),
    }


def inspect(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="A .bfm file"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Layers of a packed model (which are binary, sizes) and its provenance."""
    try:
        info = describe_bfm(model)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{model} ({info['file_bytes']} bytes), inputs {info['inputs']}")
    for layer in info["layers"]:
        kind = "binary" if layer["binary"] else "real"
        typer.echo(f"  {layer['op']:14s} {layer['name']:32s} {kind:6s} {layer['bytes']:>10d} B")
    prov = info["provenance"]
    for key in ("source_sha256", "source_format", "created_at", "bitfactor_version"):
        if key in prov:
            typer.echo(f"{key}: {prov[key]}")
    if "metrics" in prov:
        typer.echo(f"metrics: {json.dumps(prov['metrics'])}")
    if "config" in prov:
        typer.echo(f"config: {json.dumps(prov['config'])}")


def register(app: typer.Typer) -> None:
    """Add the engine's commands to the ``bitfactor`` app."""
    app.command("binarize")(binarize)
    app.command("eval")(evaluate)
    app.command("inspect")(inspect)
