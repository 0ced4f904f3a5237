"""Restore gives back exactly what was saved or refuses: a saved dtype or
shape that differs from the destination's is named (tensor, both dtypes,
both shapes) before a byte is read; cast=True and reshape=True are the
explicit ways through, and say what they changed."""

import numpy as np
import pytest
import torch

import ckptd


def saved_run(daemon, name, tensors, **kw):
    run = ckptd.connect(daemon.target).open_run(name, transport="stream", **kw)
    run.save(1, model=tensors)
    run.wait()
    return run


def test_a_dtype_or_shape_mismatch_is_refused_naming_both_and_nothing_is_read(daemon):
    g = torch.Generator().manual_seed(3)
    src = {"a": torch.randn(8, generator=g), "w": torch.randn(16, 4, generator=g).half()}
    run = saved_run(daemon, "strict", src)
    # fp16 saved, bf16 wanted: refused, not reinterpreted.
    dst = {"a": torch.zeros(8), "w": torch.zeros(16, 4, dtype=torch.bfloat16)}
    with pytest.raises(ckptd.RestoreMismatch) as e:
        run.restore(model=dst)
    msg = str(e.value)
    assert "tensor 'w'" in msg and "float16 [16, 4]" in msg and "bfloat16 [16, 4]" in msg, msg
    assert "cast=True" in msg, msg
    assert torch.count_nonzero(dst["a"]) == 0  # checked before anything was read
    # (16, 4) saved, (4, 16) wanted.
    dst = {"a": torch.zeros(8), "w": torch.zeros(4, 16, dtype=torch.float16)}
    with pytest.raises(ckptd.RestoreMismatch) as e:
        run.restore(model=dst)
    assert "[16, 4]" in str(e.value) and "[4, 16]" in str(e.value) and "reshape=True" in str(e.value)
    # Other element counts: no option helps, and it says so.
    with pytest.raises(ckptd.RestoreMismatch, match="element counts differ"):
        run.restore(model={"w": torch.zeros(4, 15, dtype=torch.float16)}, reshape=True)
    # Integers are never cast.
    run2 = saved_run(daemon, "ints", {"i": torch.arange(6, dtype=torch.int32)})
    with pytest.raises(ckptd.RestoreMismatch, match="no option converts it"):
        run2.restore(model={"i": torch.zeros(6)}, cast=True)


def test_cast_converts_between_float_dtypes_rounding_to_nearest_even_and_says_so(daemon):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(33, 7, generator=g) * 100
    src = {"w16": w.half(), "wbf": w.bfloat16(), "w32": w}
    run = saved_run(daemon, "cast", src)
    dst = {"w16": torch.zeros(33, 7, dtype=torch.bfloat16), "wbf": torch.zeros(33, 7),
           "w32": torch.zeros(33, 7, dtype=torch.float16)}
    info = run.restore(model=dst, cast=True)
    assert torch.equal(dst["w16"], src["w16"].to(torch.bfloat16))
    assert torch.equal(dst["wbf"], src["wbf"].float())  # widening: exact
    assert torch.equal(dst["w32"], w.half())
    notes = "\n".join(info.changes)
    assert "tensor 'w16': float16 -> bfloat16 (rounded to nearest, ties to even)" in notes, notes
    assert "tensor 'wbf': bfloat16 -> float32 (exact)" in notes, notes
    assert len(info.changes) == 3
    # numpy destinations (numpy has no bfloat16: from it, exactly).
    arrs = {"w16": np.zeros((33, 7), np.float32), "wbf": np.zeros((33, 7), np.float32),
            "w32": np.zeros((33, 7), np.float16)}
    run.restore(model=arrs, cast=True)
    assert np.array_equal(arrs["w16"], src["w16"].float().numpy())
    assert np.array_equal(arrs["wbf"], src["wbf"].float().numpy())
    assert np.array_equal(arrs["w32"], w.numpy().astype(np.float16))


def test_reshape_keeps_row_major_order_and_says_so(daemon):
    src = {"w": torch.arange(64, dtype=torch.float32).reshape(16, 4)}
    run = saved_run(daemon, "reshape", src)
    dst = {"w": torch.zeros(4, 16)}
    info = run.restore(model=dst, reshape=True)
    assert torch.equal(dst["w"], src["w"].reshape(4, 16))
    assert info.changes == ["tensor 'w': [16, 4] -> [4, 16] (reshaped, row-major order)"]
    # Both at once.
    dst = {"w": torch.zeros(2, 32, dtype=torch.float16)}
    info = run.restore(model=dst, reshape=True, cast=True)
    assert torch.equal(dst["w"], src["w"].reshape(2, 32).half())


def test_zero_d_and_bool_tensors_must_match_too(daemon):
    src = {"s": torch.tensor(2.5), "b": torch.tensor([True, False, True])}
    run = saved_run(daemon, "small", src)
    with pytest.raises(ckptd.RestoreMismatch, match=r"tensor 's'.*float32 \[\].*float32 \[1\]"):
        run.restore(model={"s": torch.zeros(1), "b": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(ckptd.RestoreMismatch, match=r"tensor 'b'.*bool \[3\].*uint8 \[3\]"):
        run.restore(model={"s": torch.tensor(0.0), "b": torch.zeros(3, dtype=torch.uint8)})
    dst = {"s": torch.tensor(0.0), "b": torch.zeros(3, dtype=torch.bool)}
    assert run.restore(model=dst).changes == []
    assert dst["s"].item() == 2.5 and dst["b"].tolist() == [True, False, True]


def test_load_like_a_state_dict_follows_the_same_rule(daemon):
    g = torch.Generator().manual_seed(9)
    src = {"w": torch.randn(16, 4, generator=g).half(), "b": torch.randn(4, generator=g)}
    run = saved_run(daemon, "load-like", src)
    path = run.restore(model={k: torch.zeros_like(v) for k, v in src.items()}).file
    # Without `like`: the saved dtypes and shapes, nothing compared.
    assert ckptd.load(path, as_="torch")["w"].dtype == torch.float16
    model = {"w": torch.zeros(4, 16, dtype=torch.bfloat16), "b": torch.zeros(4)}
    with pytest.raises(ckptd.RestoreMismatch) as e:
        ckptd.load(path, as_="torch", like=model)
    assert "tensor 'w'" in str(e.value) and "float16 [16, 4]" in str(e.value)
    assert "bfloat16 [4, 16]" in str(e.value)
    with pytest.raises(KeyError, match="no tensor 'extra'"):
        ckptd.load(path, like={"extra": torch.zeros(1)})
    got = ckptd.load(path, as_="torch", like=model, cast=True, reshape=True)
    assert got["w"].dtype == torch.bfloat16 and got["w"].shape == (4, 16)
    assert torch.equal(got["w"], src["w"].to(torch.bfloat16).reshape(4, 16))
    assert torch.equal(got["b"], src["b"])
    # numpy: float16 saved, float32 wanted (exact widening).
    arrays = ckptd.load(path, like={"w": np.zeros((16, 4), np.float32)}, cast=True)
    assert arrays["w"].dtype == np.float32 and np.array_equal(arrays["w"], src["w"].float().numpy())
