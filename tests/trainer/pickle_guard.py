"""A guard that refuses to unpickle data held in memory, which is how data from a peer arrives: under
it, a trainer shows that only tensors cross between its ranks. The one load it allows is
torch.load of a filesystem path, with torch's weights-only unpickler: a checkpoint on the host's
own disk.

It does not see an unpickler kept out of reach of a module's names (in a class attribute or a
closure) before it was installed, loading a pickle that resolves no global (only numbers, strings,
lists, dicts): the pickle of a tensor resolves globals.

`python tests/trainer/pickle_guard.py ARGS...` runs `chargpt ARGS...` under the guard.
"""

from __future__ import annotations

import _pickle
import os
import pickle
import sys
import threading
import types


class PickleRefused(RuntimeError):
    pass


def refuse(route: str):
    raise PickleRefused(f"pickle guard: {route} unpickles in-memory data; only tensors may cross between peers")


def refused_load(unpickler) -> None:
    refuse(f"{type(unpickler).__name__}.load")


def refusal(route: str):
    def refused(*args, **kwargs):
        refuse(route)
    return refused


def subclasses(cls: type):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from subclasses(subclass)


_loading_own_file = threading.local()


def install() -> None:
    import torch
    import torch._weights_only_unpickler as weights_only

    c_unpickler = _pickle.Unpickler
    for subclass in [*subclasses(c_unpickler)]:  # those defined before now
        subclass.load = refused_load

    class Unpickler(c_unpickler):  # and the base of those defined from now on
        load = refused_load

    original_torch_load = torch.serialization.load

    def torch_load_of_a_path(f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            refuse(f"torch.load of a {type(f).__name__}")
        was_loading, _loading_own_file.active = getattr(_loading_own_file, "active", False), True
        try:
            return original_torch_load(f, *args, **kwargs)
        finally:
            _loading_own_file.active = was_loading

    # Every name bound to these in the modules imported so far (torch.distributed's _unpickler
    # among them), pickle's and _pickle's own included, so that later imports bind the refusals.
    replacements = {id(_pickle.loads): refusal("pickle.loads"), id(_pickle.load): refusal("pickle.load"),
                    id(c_unpickler): Unpickler, id(original_torch_load): torch_load_of_a_path}
    for module in list(sys.modules.values()):
        if isinstance(module, types.ModuleType):
            namespace = vars(module)
            for name, value in list(namespace.items()):
                if id(value) in replacements:
                    namespace[name] = replacements[id(value)]

    # The Python unpicklers' classes can be changed in place, which every subclass inherits.
    pickle._Unpickler.load = refused_load
    weights_only_load = weights_only.Unpickler.load

    def weights_only_load_of_a_path(unpickler):
        if not getattr(_loading_own_file, "active", False):
            refuse(f"{type(unpickler).__name__}.load (weights only) outside torch.load of a path")
        return weights_only_load(unpickler)
    weights_only.Unpickler.load = weights_only_load_of_a_path

    # For an unpickler the names above do not reach: pickle's unpicklers (C and Python) raise this
    # event whenever they resolve a global. torch.load's weights-only unpickler raises none.
    def refuse_find_class(event: str, args: tuple) -> None:
        if event == "pickle.find_class":
            refuse(f"an unpickler resolving {args[0]}.{args[1]}")
    sys.addaudithook(refuse_find_class)


if __name__ == "__main__":
    install()
    from chargpt.cli import main

    sys.exit(main(sys.argv[1:]))
