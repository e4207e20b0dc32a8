"""Command line: `chargpt train`, `chargpt check`, `chargpt sample`, `chargpt probe` and `chargpt wait-for`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Commands import torch only when they run and need it: check (on every deployment) and --help load none.
from . import probe
from .check import check_inputs
from .checkpoint import UnreadableCheckpoints
from .config import PRESETS, ConfigError
from .data import CorpusError
from .divergence import EXIT_DIVERGED, Diverged
from .faults import FaultInjectionError, refuse_check
from .network import DistributedError, wait_for_listener
from .resume import ResumeError

EXIT_BAD_INPUT = 2
EXIT_PEER_FAILURE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (resumes from the run directory's checkpoints)")
    add_input_arguments(train)
    train.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)} (default: cpu)")
    train.add_argument("--run-dir", required=True, type=Path, help="where checkpoints and outputs go")

    check = commands.add_parser("check", help="check a run's inputs as train would, without running anything")
    add_input_arguments(check)
    check.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    check.add_argument("--world-size", type=int, default=1, help="processes over all nodes (default: 1)")
    check.add_argument("--min-world-size", type=int, metavar="N",
                       help="the fewest processes the group may go on with after losing hosts, whose ranks "
                            "each hold more of the batch (default: --world-size)")
    check.add_argument("--run-dir", type=Path, help="also check what resuming there would find (read only)")
    check.add_argument("--memory-limit", default="", metavar="SIZE",
                       help="refuse a run whose estimated memory per host exceeds SIZE (Docker's notation: 8g, "
                            "512m); default: no limit")
    check.add_argument("--processes-per-host", type=int, default=1, metavar="N",
                       help="training processes on each host, which share its memory (default: 1)")
    check.add_argument("--json", action="store_true",
                       help="print the resolved config, the corpus hash and the resume step as JSON")

    sample = commands.add_parser("sample", help="generate text with a trained model")
    sample.add_argument("--run-dir", required=True, type=Path)
    sample.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    sample.add_argument("--chars", type=int, default=500, help="characters to generate")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    sample.add_argument("--seed", type=int, default=1337)

    probe_parser = commands.add_parser(
        "probe", help="network checks between hosts (the deployment runs them); JSON out")
    probe.add_commands(probe_parser)

    wait_for = commands.add_parser(
        "wait-for", help="wait until the master's rendezvous accepts connections (the image's entrypoint runs it)")
    wait_for.add_argument("address", metavar="HOST:PORT")
    wait_for.add_argument("--timeout", type=float, required=True, metavar="SECONDS")
    return parser


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus and the overrides, which train and check read alike."""
    parser.add_argument("--data", required=True, type=Path, help="UTF-8 text corpus")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable); beats CHARGPT_<KEY> in the environment")


def train_command(args: argparse.Namespace) -> int:
    from .distributed import PeerFailure
    from .stopping import PEER_STOPPED_EXIT, PeerStopped
    from .train import train

    try:
        train(args.data, args.preset, args.run_dir, args.set)
    except Diverged as error:
        stopped_for_good(error)
        sys.stdout.flush()
        os._exit(EXIT_DIVERGED)  # no interpreter teardown, as below
    except (PeerFailure, PeerStopped) as error:
        # Every rank that sees it says so: the line names the rank.
        print(f"[chargpt] {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # No interpreter teardown: after a broken collective, Gloo's threads can abort it
        # ("terminate called without an active exception"), which would hide this exit status.
        os._exit(EXIT_PEER_FAILURE if isinstance(error, PeerFailure) else PEER_STOPPED_EXIT)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank that trained in a group leaves without interpreter teardown, in which Gloo's
        # threads now and then abort the process ("terminate called without an active
        # exception", exit -6) after the run succeeded; its output is complete and flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def check_command(args: argparse.Namespace) -> int:
    refuse_check()
    # Warnings (a torn checkpoint skipped) go to stderr: stdout may be JSON for a program to read.
    inputs = check_inputs(args.data, args.preset, args.set, args.world_size, args.run_dir,
                          warn=lambda text: print(f"[chargpt] warning: {text}", file=sys.stderr, flush=True),
                          memory_limit=args.memory_limit, processes_per_host=args.processes_per_host,
                          min_world_size=args.min_world_size)
    print(json.dumps(inputs.report(), indent=2) if args.json else inputs.summary_line(args.preset))
    return 0


def wait_for_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"{args.address!r} is not HOST:PORT")

    def log(text: str) -> None:
        print(f"[chargpt] {text}", file=sys.stderr, flush=True)

    if wait_for_listener(host, int(port), args.timeout, log):
        return 0
    print(f"chargpt: error: the master's rendezvous at {args.address} did not answer within {args.timeout:.0f} s",
          file=sys.stderr, flush=True)
    return 1


def sample_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .sample import SampleError, generate_text

    if args.chars < 1:
        parser.error(f"--chars {args.chars} must be at least 1")
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature} must be positive")
    if args.top_k < 0:
        parser.error(f"--top-k {args.top_k} must not be negative")
    if not args.prompt:
        parser.error("--prompt must not be empty")
    try:
        text = generate_text(args.run_dir, args.prompt, args.chars, args.temperature, args.top_k,
                             args.seed, log=lambda message: print(f"[chargpt] {message}", file=sys.stderr))
    except SampleError as error:
        return bad_input(error)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        if args.command == "check":
            return check_command(args)
        if args.command == "probe":
            return probe.run(args)
        if args.command == "wait-for":
            return wait_for_command(args, parser)
        return sample_command(args, parser)
    except (ConfigError, CorpusError, ResumeError, UnreadableCheckpoints, DistributedError,
            FaultInjectionError) as error:
        return bad_input(error)
    except Diverged as error:
        return stopped_for_good(error)


def bad_input(error: Exception) -> int:
    if first_to_report_on_this_host():
        print(f"chargpt: error: {error}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def stopped_for_good(error: Diverged) -> int:
    if first_to_report_on_this_host():
        print(f"chargpt: error: {error}", file=sys.stderr, flush=True)
    return EXIT_DIVERGED


def first_to_report_on_this_host() -> bool:
    """Under torchrun every local rank meets the same bad input, and one line per host is enough.
    The first rank to get here says it: torchrun stops the others as soon as one exits, so a rank
    chosen in advance could be stopped before it says anything."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return True
    # The ranks of one attempt share their parent, torchrun's agent: its PID and start time name it
    # (a run id does not: torchrun's default is "none", the same for every launch).
    agent = os.getppid()
    try:
        agent_started = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return True
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    marker = Path(tempfile.gettempdir()) / f"chargpt-reported-{agent}-{agent_started}-{attempt}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True
