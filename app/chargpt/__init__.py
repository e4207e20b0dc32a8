"""chargpt: a fast, resumable character-level GPT trainer for multi-host DDP."""

import os

# OpenMP threads that spin while waiting collapse throughput when the cores are shared with other
# work (docs/PERFORMANCE.md, "OpenMP's wait policy"). This must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
