"""Command line: `chargpt train` and `chargpt sample`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import PRESETS, ConfigError
from .data import CorpusError
from .distributed import DistributedError, PeerFailure
from .faults import FaultInjectionError
from .sample import SampleError, generate_text
from .train import ResumeError, train

EXIT_BAD_INPUT = 2
EXIT_PEER_FAILURE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (resumes from the run directory's checkpoints)")
    train.add_argument("--data", required=True, type=Path, help="UTF-8 text corpus")
    train.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)} (default: cpu)")
    train.add_argument("--run-dir", required=True, type=Path, help="where checkpoints and outputs go")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (repeatable); beats CHARGPT_<KEY> in the environment")

    sample = commands.add_parser("sample", help="generate text with a trained model")
    sample.add_argument("--run-dir", required=True, type=Path)
    sample.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    sample.add_argument("--chars", type=int, default=500, help="characters to generate")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    sample.add_argument("--seed", type=int, default=1337)
    return parser


def train_command(args: argparse.Namespace) -> int:
    train(args.data, args.preset, args.run_dir, args.set)
    return 0


def sample_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.chars < 1:
        parser.error(f"--chars {args.chars} must be at least 1")
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature} must be positive")
    if args.top_k < 0:
        parser.error(f"--top-k {args.top_k} must not be negative")
    if not args.prompt:
        parser.error("--prompt must not be empty")
    text = generate_text(args.run_dir, args.prompt, args.chars, args.temperature, args.top_k,
                         args.seed, log=lambda message: print(f"[chargpt] {message}", file=sys.stderr))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        return sample_command(args, parser)
    except PeerFailure as error:
        # Every rank that sees it says so: the line names the rank.
        print(f"[chargpt] {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # No interpreter teardown: after a broken collective, Gloo's threads can abort it
        # ("terminate called without an active exception"), which would hide this exit status.
        os._exit(EXIT_PEER_FAILURE)
    except (ConfigError, CorpusError, ResumeError, DistributedError, SampleError, FaultInjectionError) as error:
        # Under torchrun every rank gets the same error; one line per host is enough.
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"chargpt: error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
