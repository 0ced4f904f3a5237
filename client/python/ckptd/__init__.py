"""ckptd: checkpoints for PyTorch (and numpy) trainers through the ckptd daemon.

    import ckptd
    run = ckptd.connect().open_run("tiny-gpt", schedule={"every_steps": 100})
    info = run.restore(model=model, optimizer=opt)          # None on a fresh run
    for step in range(info.step + 1 if info else 0, steps):
        ...
        run.maybe_save(step, model=model, optimizer=opt, extra={"batch": i})

Needs grpcio, protobuf and numpy (Debian: python3-grpcio, python3-protobuf,
python3-numpy); torch and xxhash are optional. The gRPC stubs in ckptd.v1
are generated from ckptd.proto when the package is built.
"""

__version__ = "0.1.0"

from .client import Client, Error, RestoreInfo, Run, SaveResult, connect
from .compat import RestoreMismatch
from .gguf import GgufError
from .preemption import on_preemption
from .reader import Checkpoint, DigestMismatch, load, load_metadata, load_step
from .values import Typed

__all__ = [
    "__version__",
    "Checkpoint",
    "Client",
    "DigestMismatch",
    "Error",
    "GgufError",
    "RestoreInfo",
    "RestoreMismatch",
    "Run",
    "SaveResult",
    "Typed",
    "connect",
    "load",
    "load_metadata",
    "load_step",
    "on_preemption",
]
