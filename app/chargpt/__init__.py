"""chargpt: a fast, resumable character-level GPT trainer for multi-host DDP."""

import os

# OpenMP threads that spin while waiting collapse throughput when the cores are shared with other
# work (measured here: 2 threads went from 70 ms to over 1 s a step). This must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
