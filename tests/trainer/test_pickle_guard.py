"""The guard under which the replica tests run the trainer (pickle_guard.py): every route that
unpickles in-memory data without it is refused with it, and a checkpoint on the host's own disk still
loads. The routes run in child processes: the guard cannot be uninstalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from chargpt import checkpoint
from conftest import child_env
from test_tensor_tree import assert_same

# argv: guarded or unguarded; the checkpoint to load, where to save what it loaded.
ROUTES = """
import io, json, pickle, _pickle, sys
from collections import OrderedDict
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
import torch
import torch.distributed.distributed_c10d as c10d
import pickle_guard
from chargpt import checkpoint

class DefinedBefore(pickle.Unpickler):
    pass

if sys.argv[1] == "guarded":
    pickle_guard.install()

class DefinedAfter(pickle.Unpickler):
    pass

plain = pickle.dumps({"step": 80, "rng": [1, 2, 3]}, protocol=2)  # resolves no global
with_global = pickle.dumps(OrderedDict(step=80))  # resolves collections.OrderedDict
saved = io.BytesIO()
torch.save({"w": torch.arange(4)}, saved)
routes = {
    "pickle.loads": lambda: pickle.loads(plain),
    "pickle.load": lambda: pickle.load(io.BytesIO(plain)),
    "pickle.Unpickler": lambda: pickle.Unpickler(io.BytesIO(plain)).load(),
    "pickle._Unpickler": lambda: pickle._Unpickler(io.BytesIO(plain)).load(),
    "pickle._loads": lambda: pickle._loads(plain),
    "_pickle.loads": lambda: _pickle.loads(plain),
    "_pickle.Unpickler": lambda: _pickle.Unpickler(io.BytesIO(plain)).load(),
    "a subclass of pickle.Unpickler defined before the guard": lambda: DefinedBefore(io.BytesIO(plain)).load(),
    "a subclass of pickle.Unpickler defined after the guard": lambda: DefinedAfter(io.BytesIO(plain)).load(),
    "torch.load of a BytesIO": lambda: torch.load(io.BytesIO(saved.getvalue()), weights_only=True),
    "torch's weights-only unpickler": lambda: torch._weights_only_unpickler.load(io.BytesIO(plain)),
    "torch.distributed's _unpickler": lambda: c10d._tensor_to_object(
        torch.frombuffer(bytearray(plain), dtype=torch.uint8), len(plain), None),
    # pickle.loads kept in a class attribute before the guard: only the audit hook sees it.
    "ForkingPickler.loads": lambda: ForkingPickler.loads(with_global),
}
outcomes = {}
for route, load in routes.items():
    try:
        load()
        outcomes[route] = "loaded"
    except pickle_guard.PickleRefused:
        outcomes[route] = "refused"
    except Exception as error:
        outcomes[route] = f"{type(error).__name__}: {error}"
torch.save(checkpoint.load_checkpoint(Path(sys.argv[2])), sys.argv[3])
print(json.dumps(outcomes))
"""


def a_checkpoint() -> dict:
    """As the trainer's: a model's and an optimizer's state after a step, the RNG states."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 40,
            "config": {"lr": 0.005}, "model_args": {"n_layer": 2}, "vocab": ["a", "b"],
            "rng": [{"torch": torch.get_rng_state(), "batches": torch.Generator().get_state()}]}


def try_routes(guard: str, path: Path, loaded: Path) -> dict[str, str]:
    env = child_env()
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", ROUTES, guard, str(path), str(loaded)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_guard_refuses_every_route_and_loads_the_hosts_own_checkpoint(tmp_path):
    state = a_checkpoint()
    path = checkpoint.save_checkpoint(tmp_path, 40, state, keep=1)
    loaded = tmp_path / "loaded.pt"
    unguarded = try_routes("unguarded", path, loaded)
    assert {route: outcome for route, outcome in unguarded.items() if outcome != "loaded"} == {}, \
        "a route that does not unpickle even without the guard proves nothing"
    loaded.unlink()
    guarded = try_routes("guarded", path, loaded)
    assert {route: outcome for route, outcome in guarded.items() if outcome != "refused"} == {}
    assert list(guarded) == list(unguarded)
    assert_same(checkpoint.with_digest(state), torch.load(loaded, weights_only=True))
