"""Files a finished run leaves behind: the final model, the metrics history, the loss chart."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_save_torch, atomic_write_text
from .data import CharTokenizer
from .model import GPT, GPTConfig
from .plot import loss_chart_svg


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


def plot_losses(metrics_path: Path, chart_path: Path) -> None:
    atomic_write_text(chart_path, loss_chart_svg(read_metrics(metrics_path)))
