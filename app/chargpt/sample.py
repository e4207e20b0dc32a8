"""Generate text from a trained run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint
from .data import CharTokenizer
from .model import GPT
from .outputs import load_model


class SampleError(ValueError):
    """The run directory or the prompt cannot be sampled from."""


def load_run(run_dir: Path, device: torch.device, log):
    """The final model of run_dir, or its newest checkpoint when training has not finished."""
    run_dir = Path(run_dir)
    final = run_dir / "model.pt"
    if final.is_file():
        state = torch.load(final, map_location="cpu", weights_only=True)
    else:
        state = checkpoint.load_latest_checkpoint(run_dir, warn=log)
        if state is None:
            raise SampleError(f"{run_dir} has no model.pt and no checkpoint; train first with "
                              f"chargpt train --run-dir {run_dir}")
        log(f"no model.pt yet: sampling from the checkpoint of step {state['step']}")
    return load_model(state, device)


def sample_text(model: GPT, tokenizer: CharTokenizer, prompt: str, chars: int, temperature: float,
                top_k: int, seed: int, device: torch.device) -> str:
    """The prompt followed by chars sampled characters (top_k 0: no top-k filtering)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    context = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    model.eval()
    ids = model.generate(context, chars, temperature, top_k or None, generator)
    return tokenizer.decode(ids[0].tolist())


def generate_text(run_dir: Path, prompt: str, chars: int, temperature: float, top_k: int,
                  seed: int, log) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_run(run_dir, device, log)
    unknown = tokenizer.unknown(prompt)
    if unknown:
        raise SampleError(f"the prompt contains characters the model never saw: {''.join(unknown)!r}; "
                          "use characters of the training corpus")
    return sample_text(model, tokenizer, prompt, chars, temperature, top_k, seed, device)
