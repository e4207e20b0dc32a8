"""A global batch that the world size does not divide, with real Gloo groups on CPU over 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.multiprocessing as mp

from conftest import free_port, leave_like_the_cli

CPU = torch.device("cpu")
# lr 1 and plain SGD without clipping: the step moves each parameter by exactly its gradient (AdamW
# and clipping would hide a gradient off by a constant factor).
SETTINGS = {"batch_size": "4", "lr": "1", "warmup_steps": "0", "grad_clip": "0"}
STARTS = [0, 1000, 2000, 3000]  # the 4 sequences of the global batch: windows of the training split


def set_torchrun_environment(rank: int, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("GLOO_SOCKET_IFNAME", None)


def join_group(rank: int, world_size: int, port: int):
    set_torchrun_environment(rank, world_size, port)
    torch.set_num_threads(1)
    from chargpt import distributed

    env = distributed.read_env()
    distributed.init_process_group(env, CPU, 60, log=lambda message: None)
    return env


def one_step(corpus_path: str, micro_batch_size: int, env) -> tuple[dict, float]:
    """One training step of this rank on its share of the known sequences: the parameters after it and
    the loss as the trainer logs it (averaged over the ranks)."""
    from chargpt import distributed
    from chargpt.config import build_config
    from chargpt.data import load_corpus
    from chargpt.train import build_training_state, parallelize, train_step

    config = build_config("smoke", {**SETTINGS, "micro_batch_size": str(micro_batch_size)}, environ={})
    corpus = load_corpus(corpus_path, config.block_size, config.val_fraction)
    model, _, _ = build_training_state(config, corpus.tokenizer.vocab_size, env, CPU, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    x = torch.stack([corpus.train[start:start + config.block_size] for start in STARTS])
    y = torch.stack([corpus.train[start + 1:start + 1 + config.block_size] for start in STARTS])
    first = sum(config.rank_batch(env.world_size, rank) for rank in range(env.rank))
    share = slice(first, first + config.rank_batch(env.world_size, env.rank))
    sizes = config.micro_batches(env.world_size, env.rank)
    batches = list(zip(x[share].split(sizes), y[share].split(sizes)))
    loss = train_step(parallelize(model, config, env, CPU), optimizer, config, 0, batches, env.world_size, CPU,
                      contextlib.nullcontext())
    return model.state_dict(), distributed.all_reduce_mean(loss.reshape(1)).item()


def step_one_rank(rank: int, world_size: int, port: int, corpus_path: str, micro_batch_size: int,
                  out_dir: str) -> None:
    from chargpt import distributed

    env = join_group(rank, world_size, port)
    try:
        parameters, loss = one_step(corpus_path, micro_batch_size, env)
        torch.save({"parameters": parameters, "loss": loss}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()
    leave_like_the_cli()


def test_three_uneven_ranks_step_as_one_process_on_the_same_sequences(corpus_path, tmp_path):
    from chargpt.config import build_config
    from chargpt.data import load_corpus
    from chargpt.distributed import DistEnv
    from chargpt.train import build_training_state

    # Shares 2, 1, 1 of the batch of 4; rank 0 runs two micro-batches, the others one.
    mp.spawn(step_one_rank, args=(3, free_port(), str(corpus_path), 1, str(tmp_path)), nprocs=3, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(3)]
    # The reference: one process, the 4 sequences in one forward pass, the mean loss over them.
    expected, expected_loss = one_step(str(corpus_path), 0, DistEnv())
    config = build_config("smoke", SETTINGS, environ={})
    vocab_size = load_corpus(corpus_path, config.block_size, config.val_fraction).tokenizer.vocab_size
    initial = build_training_state(config, vocab_size, DistEnv(), CPU, None)[0].state_dict()

    for name, value in expected.items():
        assert (value - initial[name]).abs().max() > 1e-4, f"{name}: the step hardly moved it"
        for rank, result in enumerate(ranks):
            actual = result["parameters"][name]
            assert torch.allclose(actual, value, rtol=1e-5, atol=1e-7), \
                f"{name} on rank {rank}: max difference {(actual - value).abs().max().item():.3g}"
    assert all(abs(result["loss"] - expected_loss) < 1e-6 for result in ranks), (ranks[0]["loss"], expected_loss)


def train_one_rank(rank: int, world_size: int, port: int, corpus: str, run_dir: str) -> None:
    set_torchrun_environment(rank, world_size, port)
    from chargpt.train import train

    train(corpus, "smoke", run_dir, ["max_steps=4", "eval_interval=2", "checkpoint_interval=2", "eval_batches=3",
                                     "micro_batch_size=2", "num_threads=1", "sample_chars=10"])
    leave_like_the_cli()


def test_five_ranks_train_the_smoke_batch_of_twelve(corpus_path, tmp_path):
    """Shares 3, 3, 2, 2, 2 in micro-batches of 2: two forward passes on two ranks, one on the others."""
    run_dir = tmp_path / "run"
    mp.spawn(train_one_rank, args=(5, free_port(), str(corpus_path), str(run_dir)), nprocs=5, join=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["final_step"]) == ("complete", 5, 4)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [2, 4]
