"""The model's shape, without torch: `chargpt check` counts the parameters from it on every deployment."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True  # lm_head shares the token embedding's weights (GPT-2)
    activation: str = "gelu"  # of the MLP, "gelu" or "relu"; models saved before it was a setting used GELU

    def parameter_count(self) -> int:
        """GPT(self).num_parameters(), from the shape alone: building the model to count them, even
        on the meta device, costs about 2 s of CPU (its initialisation), which `chargpt check` runs
        on every deployment."""
        width, biased = self.n_embd, int(self.bias)
        # Per block: qkv (3C²), proj (C²), up and down (8C²); two LayerNorms; their biases.
        block = 12 * width * width + 2 * width + biased * (3 * width + width + 4 * width + width + 2 * width)
        embeddings = (self.vocab_size + self.block_size) * width
        head = 0 if self.tie_embeddings else self.vocab_size * width
        return embeddings + self.n_layer * block + (1 + biased) * width + head


def model_args(settings, vocab_size: int) -> GPTConfig:
    """The model's shape from a training config: every GPTConfig field from the setting of the same name."""
    shape = {field.name: getattr(settings, field.name) for field in fields(GPTConfig) if field.name != "vocab_size"}
    return GPTConfig(vocab_size=vocab_size, **shape)
