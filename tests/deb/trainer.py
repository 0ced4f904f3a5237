"""The packaged Python client inside the test root: `save` trains a numpy
model for 30 steps with a checkpoint every 10; `restore` gives it back and
checks every byte, dtype and shape against the model of the restored step."""
import sys

import numpy as np

import ckptd

RUN = sys.argv[2] if len(sys.argv) > 2 else "py-deb"


def model(step):
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((64, 32)).astype(np.float32),
            "b": np.arange(32, dtype=np.int64) * step,
            "h": rng.standard_normal(17).astype(np.float16)}


assert ckptd.__file__.startswith("/usr/lib/python3/dist-packages/ckptd/"), ckptd.__file__
run = ckptd.connect().open_run(RUN, schedule={"every_steps": 10})
if sys.argv[1] == "save":
    assert run.restore(model={k: v.copy() for k, v in model(0).items()}) is None, "the run is not new"
    for step in range(1, 31):
        run.maybe_save(step, model=model(step), extra={"next_step": step + 1})
    run.close()
    print("saved up to", run.latest()[0])
else:
    into = {k: np.zeros_like(v) for k, v in model(0).items()}
    info = run.restore(model=into)
    assert info is not None and info.step == 30 and info.extra == {"next_step": 31}, info
    want = model(info.step)
    for k, v in want.items():
        assert into[k].dtype == v.dtype and into[k].shape == v.shape, k
        assert into[k].tobytes() == v.tobytes(), f"{k} differs"
    run.close()
    print("restored step", info.step, "exactly")
