"""Files a finished run leaves behind: the final model, the metrics history, the loss plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .checkpoint import atomic_save_torch, atomic_write_bytes
from .data import CharTokenizer
from .model import GPT, GPTConfig


def write_final_model(path: Path, model: GPT, tokenizer: CharTokenizer) -> None:
    atomic_save_torch(path, {"model": model.state_dict(), "model_args": model.config.__dict__,
                             "vocab": tokenizer.chars})


def load_model(state: dict, device: torch.device) -> tuple[GPT, CharTokenizer]:
    """A model and its tokenizer from model.pt's (or a checkpoint's) contents."""
    model = GPT(GPTConfig(**state["model_args"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), CharTokenizer(state["vocab"])


METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl, oldest first."""
    if not Path(path).exists():
        return []
    return parse_metrics(Path(path).read_text(encoding="utf-8"))


def parse_metrics(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a run killed while writing it
            continue
    return records


def plot_losses(metrics_path: Path, image_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    history = read_metrics(metrics_path)
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=100)
    steps = [record["step"] for record in history]
    axes.plot(steps, [record["train_loss"] for record in history], marker="o", label="train")
    axes.plot(steps, [record["val_loss"] for record in history], marker="o", label="val")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title("chargpt loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    atomic_write_bytes(image_path, buffer.getvalue())
