"""`chargpt check`: a run's inputs checked by the trainer's own code, before anything runs.

The Ansible preflight runs it on the control node and the image's entrypoint before torchrun, so
that bad input (exit 2, it would fail again) stops a deployment before a host changes, and `train`
runs the same checks. It only reads: nothing in the run directory changes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .config import ConfigError, TrainConfig, build_config, parse_assignments
from .data import Corpus, load_corpus
from .memory import MemoryEstimate, check_fits, estimate, parse_size
from .model_config import model_args
from .resume import Resume, experiment_id, find_resume_state


@dataclass
class CheckedInputs:
    config: TrainConfig
    corpus: Corpus
    world_size: int
    resume: Resume
    memory: MemoryEstimate

    def report(self) -> dict:
        """What `chargpt check --json` prints."""
        return {"config": self.config.to_dict(), "corpus_sha256": self.corpus.sha256,
                "corpus_chars": self.corpus.characters, "world_size": self.world_size,
                "resume_step": self.resume.step, "experiment": experiment_id(self.config, self.corpus.sha256),
                "gradient_bytes": self.gradient_bytes(), "memory": self.memory.report()}

    def gradient_bytes(self) -> int:
        """What DDP all-reduces every step: a float32 gradient per parameter."""
        return 4 * model_args(self.config, self.corpus.tokenizer.vocab_size).parameter_count()

    def summary_line(self, preset: str) -> str:
        start = "starts at step 0" if self.resume.step is None else f"resumes from step {self.resume.step}"
        return (f"chargpt: check passed: preset {preset}, world size {self.world_size}, corpus "
                f"{self.corpus.characters:,} characters (sha256 {self.corpus.sha256}), {start}")


def check_inputs(data: Path, preset: str, assignments: list[str], world_size: int, run_dir: Path | None,
                 warn: Callable[[str], None], environ: Mapping[str, str] | None = None,
                 memory_limit: str = "", processes_per_host: int = 1,
                 min_world_size: int | None = None) -> CheckedInputs:
    """The config (preset, CHARGPT_<KEY> variables, --set), the batch against the world size, the
    corpus, the memory a host of processes_per_host trainers needs against memory_limit (Docker's
    notation, e.g. "8g"; "" for none) and, with a run directory, what resuming there would find.
    A group that may go on with fewer processes (min_world_size) splits the same batch over fewer
    ranks: the memory is the larger of the two ends. Raises on bad input."""
    config = build_config(preset, parse_assignments(assignments), environ)
    config.check_world_size(world_size)
    smallest = world_size if min_world_size is None else min_world_size
    if not 1 <= smallest <= world_size:
        raise ConfigError(f"the smallest world size ({smallest}) must be from 1 to the world size ({world_size})")
    limit = parse_size(memory_limit) if memory_limit else None
    corpus = load_corpus(data, config.block_size, config.val_fraction)
    memory = max((estimate(config, corpus.tokenizer.vocab_size, corpus.characters, sys.getsizeof(corpus.text),
                           size, processes_per_host) for size in {world_size, smallest}),
                 key=lambda each: each.host_bytes)
    if limit is not None:
        check_fits(memory, limit, memory_limit, config)
    resume = Resume(None) if run_dir is None else find_resume_state(Path(run_dir), config, corpus, warn)
    return CheckedInputs(config, corpus, world_size, resume, memory)
