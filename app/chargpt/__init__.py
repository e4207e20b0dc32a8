"""chargpt: a fast, resumable character-level GPT trainer for multi-host DDP."""
