import dataclasses
import math

import pytest
import torch

from chargpt.config import PRESETS, ConfigError, TrainConfig, build_config, parse_assignments


def test_presets_hold_the_documented_values():
    original = build_config("original", environ={})
    assert (original.batch_size, original.block_size, original.n_embd, original.n_head,
            original.n_layer, original.dropout, original.lr, original.max_steps,
            original.eval_interval) == (64, 256, 384, 6, 6, 0.2, 3e-4, 5000, 500)
    cpu = build_config("cpu", environ={})
    assert (cpu.n_layer, cpu.n_head, cpu.n_embd, cpu.block_size, cpu.batch_size, cpu.dropout,
            cpu.lr, cpu.lr_schedule, cpu.max_steps) == (4, 4, 128, 64, 12, 0.0, 1e-3, "cosine", 2000)
    assert cpu.warmup_steps > 0


@pytest.mark.parametrize("preset, worlds", [("smoke", range(1, 13)), ("cpu", range(1, 13)),
                                            ("original", range(1, 65))])
def test_presets_run_on_every_world_size_up_to_their_batch(preset, worlds):
    for world_size in worlds:
        build_config(preset, environ={}).check_world_size(world_size)


@pytest.mark.parametrize("world_size", range(13, 17))
def test_a_world_larger_than_the_batch_says_what_to_set(world_size):
    with pytest.raises(ConfigError, match=f"^batch_size=12 is smaller than the world size {world_size}; "
                                          f"set batch_size to at least {world_size}$"):
        build_config("smoke", environ={}).check_world_size(world_size)


def test_precedence_is_set_then_environment_then_preset():
    environ = {"CHARGPT_MAX_STEPS": "7", "CHARGPT_LR": "0.002", "OTHER": "x"}
    config = build_config("smoke", {"max_steps": "9"}, environ=environ)
    assert config.max_steps == 9
    assert config.lr == 0.002
    assert config.n_embd == PRESETS["smoke"]["n_embd"]


def test_values_are_parsed_by_type():
    config = build_config("cpu", {"compile": "true", "dropout": "0.1", "device": "cpu"}, environ={})
    assert config.compile is True and config.dropout == 0.1 and config.device == "cpu"


@pytest.mark.parametrize("preset, overrides, environ, message", [
    ("huge", {}, {}, "unknown preset 'huge'"),
    ("cpu", {"n_layers": "3"}, {}, "unknown config key 'n_layers' (from --set n_layers)"),
    ("cpu", {}, {"CHARGPT_LEARNING_RATE": "1"}, "unknown config key 'learning_rate' (from environment variable CHARGPT_LEARNING_RATE)"),
    ("cpu", {"max_steps": "many"}, {}, "bad value 'many' for max_steps"),
    ("cpu", {"max_steps": "1.5"}, {}, "bad value '1.5' for max_steps"),
    ("cpu", {"compile": "maybe"}, {}, "bad value 'maybe' for compile"),
    ("cpu", {"max_steps": "0"}, {}, "max_steps=0 must be at least 1"),
    ("cpu", {"lr": "-1"}, {}, "lr=-1.0 must be positive"),
    ("cpu", {"n_head": "3"}, {}, "n_embd=128 must be divisible by n_head=3"),
    ("cpu", {"dropout": "1.5"}, {}, "dropout=1.5 must be in [0, 1)"),
    ("cpu", {"val_fraction": "0"}, {}, "val_fraction=0.0 must be between 0 and 1"),
    ("cpu", {"device": "tpu"}, {}, "device='tpu' is not one of"),
    ("cpu", {"lr_schedule": "linear"}, {}, "lr_schedule='linear' is not one of"),
    ("cpu", {"activation": "tanh"}, {}, "activation='tanh' is not one of: gelu, relu"),
    ("cpu", {"min_lr": "0.5"}, {}, "min_lr=0.5 must not exceed lr"),
    ("cpu", {"dist_timeout_s": "0"}, {}, "dist_timeout_s=0.0 must be positive"),
    ("cpu", {"warmup_steps": "-2"}, {}, "warmup_steps=-2 must not be negative"),
    ("cpu", {"lr": "nan"}, {}, "lr=nan is not a finite number (from --set lr); set lr to a finite number "
                              "such as 0.001, or remove the override to keep the preset's value"),
    ("cpu", {}, {"CHARGPT_DROPOUT": "NaN"}, "dropout=nan is not a finite number (from environment variable "
                                            "CHARGPT_DROPOUT)"),
    ("cpu", {"grad_clip": "inf"}, {}, "grad_clip=inf is not a finite number"),
    ("cpu", {}, {"CHARGPT_MIN_LR": "-inf"}, "min_lr=-inf is not a finite number"),
    ("cpu", {"dist_timeout_s": "Infinity"}, {}, "dist_timeout_s=inf is not a finite number"),
    ("cpu", {"allow_config_change": "max_steps,max_step"}, {},
     "allow_config_change names unknown key(s) max_step; list config keys"),
    ("cpu", {"allow_config_change": "max_steps, n_embd"}, {},
     "allow_config_change names n_embd, which set the model's shape: a checkpoint cannot load into another "
     "shape"),
])
def test_bad_input_names_the_key(preset, overrides, environ, message):
    with pytest.raises(ConfigError) as caught:
        build_config(preset, overrides, environ=environ)
    assert message in str(caught.value)


def test_malformed_override_word():
    with pytest.raises(ConfigError, match="'max_steps' is not KEY=VALUE"):
        parse_assignments(["max_steps"])
    assert parse_assignments(["LR=0.1", "seed=3"]) == {"lr": "0.1", "seed": "3"}


def test_wrong_python_type_is_rejected():
    with pytest.raises(ConfigError, match="n_layer='4' must be of type int"):
        TrainConfig(n_layer="4")
    with pytest.raises(ConfigError, match="compile=1 must be of type bool"):
        TrainConfig(compile=1)


@pytest.mark.parametrize("name", [field.name for field in dataclasses.fields(TrainConfig) if field.type == "float"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_refuses_non_finite_values_from_the_dataclass_too(name, value):
    with pytest.raises(ConfigError, match=f"{name}={value} is not a finite number; set {name} to a finite"):
        TrainConfig(**{name: value})


def test_allow_config_change_lists_keys():
    config = build_config("cpu", {"allow_config_change": " Max_Steps, lr,,dropout "}, environ={})
    assert config.allowed_changes == {"max_steps", "lr", "dropout"}
    assert build_config("cpu", environ={}).allowed_changes == frozenset()


def test_the_model_shape_keys_are_the_gpt_config_fields_but_vocabulary_and_dropout():
    from chargpt.config import MODEL_SHAPE_KEYS, RUNTIME_KEYS
    from chargpt.model import GPTConfig

    assert MODEL_SHAPE_KEYS == {field.name for field in dataclasses.fields(GPTConfig)} - {"vocab_size", "dropout"}
    assert RUNTIME_KEYS <= set(TrainConfig().to_dict()) and not RUNTIME_KEYS & MODEL_SHAPE_KEYS


def splits(batch_sizes=range(1, 25), micro_batch_sizes=(0, 1, 2, 3, 5)):
    """(config, world size) for every world a batch of 1-24 can run on, with micro-batches of 0-5."""
    for batch_size in batch_sizes:
        for micro_batch_size in micro_batch_sizes:
            config = TrainConfig(batch_size=batch_size, micro_batch_size=micro_batch_size)
            for world_size in range(1, batch_size + 1):
                config.check_world_size(world_size)
                yield config, world_size


def test_the_ranks_share_the_global_batch_as_evenly_as_it_goes():
    for config, world_size in splits(micro_batch_sizes=(0,)):
        shares = [config.rank_batch(world_size, rank) for rank in range(world_size)]
        assert sum(shares) == config.batch_size
        assert shares == sorted(shares, reverse=True) and shares[0] - shares[-1] <= 1, shares
    assert [TrainConfig(batch_size=12).rank_batch(8, rank) for rank in range(8)] == [2, 2, 2, 2, 1, 1, 1, 1]


def test_micro_batches_are_of_micro_batch_size_but_the_last():
    for config, world_size in splits():
        for rank in range(world_size):
            sizes = config.micro_batches(world_size, rank)
            assert sum(sizes) == config.rank_batch(world_size, rank)
            micro = config.micro_batch_size or sizes[0]
            assert all(size == micro for size in sizes[:-1]) and 0 < sizes[-1] <= micro, sizes
    assert TrainConfig(batch_size=12, micro_batch_size=4).micro_batches(2, 0) == [4, 2]
    assert TrainConfig(batch_size=12, micro_batch_size=0).micro_batches(5, 1) == [3]


def test_weighted_losses_averaged_over_the_ranks_are_the_global_batch_mean():
    """The loss of every sequence, split as the trainer splits it, weighted and averaged as DDP does."""
    generator = torch.Generator().manual_seed(0)
    for config, world_size in splits():
        losses = torch.rand(config.batch_size, generator=generator, dtype=torch.float64)
        per_rank = losses.split([config.rank_batch(world_size, rank) for rank in range(world_size)])
        ranks = [sum(micro.mean() / config.loss_divisor(len(micro), world_size)
                     for micro in share.split(config.micro_batches(world_size, rank)))
                 for rank, share in enumerate(per_rank)]
        assert math.isclose(sum(ranks) / world_size, losses.mean().item(), rel_tol=1e-12)


def test_an_even_split_divides_each_loss_by_the_number_of_micro_batches():
    """As plain gradient accumulation does, and exactly: the divisor is an integer-valued float."""
    for config, world_size in splits():
        if config.batch_size % world_size == 0:
            sizes = config.micro_batches(world_size, 0)
            if len(set(sizes)) == 1:
                assert [config.loss_divisor(size, world_size) for size in sizes] == [len(sizes)] * len(sizes)
