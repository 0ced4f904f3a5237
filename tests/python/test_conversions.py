"""Export casts are bit-exact with ggml's reference conversions, checked on
special values (NaN payloads and signs, +-Inf, +-0, float32 and float16
subnormals, rounding ties, overflow) and random values, through a real save.

Where each expected value comes from:
* F16: numpy's float32 -> float16 cast (IEEE round to nearest even, overflow
  to inf, subnormals kept) for numbers; for NaN ggml's
  ggml_compute_fp32_to_fp16 (ggml-impl.h) gives 0x7E00 | sign, payload
  dropped (numpy keeps the payload, so NaN is taken from ggml's definition).
* BF16: torch's float32 -> bfloat16 cast (round to nearest even) for
  numbers; for NaN ggml's ggml_compute_fp32_to_bf16: (bits >> 16) | 64.
* Q8_0: ggml-quants.c quantize_row_q8_0_ref transcribed below in numpy
  float32: amax by ggml's MAX macro (a NaN replaces the running maximum, the
  next number replaces the NaN), d = amax / 127, id = d ? 1/d : 0, scale =
  fp16(d), q = C roundf(x * id) (half away from zero); a NaN or infinite
  product stores 0 (x86 cvttss2si).
"""

import os

import numpy as np
import torch

import ckptd
from ckptd import gguf as G


def special_values() -> np.ndarray:
    bits = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
            0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00001, 0xFFBFFFFF, 0x7FC12345,  # NaNs
            0x00000001, 0x80000001, 0x007FFFFF, 0x00400000,  # f32 subnormals
            0x33800000, 0x33000000, 0x33C00000, 0x38800000, 0x387FC000,  # f16 subnormal edges
            0x477FE000, 0x477FF000, 0x477FEFFF, 0x7F7FFFFF,  # f16 max, tie to inf, below, f32 max
            0x3F808000, 0x3F818000, 0x3F800FFF, 0x3F801000, 0x3F801001,  # bf16 / f16 ties
            0x3F802000, 0x3F806000, 0xBF808000, 0x00010000]
    v = np.array(bits, np.uint32).view(np.float32)
    return np.resize(v, 64)  # two rows of 32


def q8_blocks() -> np.ndarray:
    rng = np.random.default_rng(7)
    blocks = [np.zeros(32, np.float32)]                       # all-zero block
    b = np.zeros(32, np.float32)
    b[0] = 127
    b[1:9] = [2.5, -2.5, 0.5, -0.5, 1.5, 126.5, -126.5, 3.49999]
    blocks.append(b)                                           # ties: roundf away from zero
    for at, value in ((5, np.inf),                             # an infinity
                      (7, np.nan),                             # NaN mid-block
                      (31, np.nan)):                           # NaN last: amax stays NaN
        b = rng.standard_normal(32).astype(np.float32)
        b[at] = value
        blocks.append(b)
    blocks.append(np.array([0x00000001 * (i + 1) for i in range(32)], np.uint32).view(np.float32))  # subnormal
    blocks.append(np.full(32, -0.0, np.float32))
    blocks.append(np.linspace(-1e-3, 1e-3, 32, dtype=np.float32))
    wide = rng.standard_normal(32 * 24) * 10.0 ** rng.integers(-8, 8, 32 * 24)
    return np.concatenate(blocks + [wide.astype(np.float32)])


def expected_f16(x):
    out = x.astype(np.float16).view(np.uint16).copy()
    u = x.view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    out[nan] = (0x7E00 | ((u[nan] >> 16) & 0x8000)).astype(np.uint16)
    return out


def expected_bf16(x):
    out = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()
    u = x.view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    out[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return out


def expected_q8_0(x):
    out = bytearray()
    with np.errstate(all="ignore"):
        for block in x.reshape(-1, 32):
            amax = np.float32(0)
            for a in np.abs(block):
                amax = amax if amax > a else a
            d = np.float32(amax / np.float32(127))
            inv = np.float32(1) / d if d != 0 else np.float32(0)
            out += expected_f16(np.array([d], np.float32)).tobytes()
            for v in block:
                p = np.float32(v * inv)
                r = np.sign(p) * np.floor(np.abs(p) + np.float32(0.5))
                out += (int(r) if np.isfinite(r) else 0).to_bytes(1, "little", signed=True)
    return bytes(out)


def profile(tmp_path, ttype):
    p = tmp_path / f"cast-{ttype}.toml"
    p.write_text(f'name = "cast-{ttype.replace("_", "")}"\n'
                 'rename = [{ from = "{X}", to = "{X}" }]\n'
                 f'cast = [{{ match = "*", type = "{ttype}" }}]\n')
    return str(p)


def tensor_bytes(path, name):
    h = G.read_header(path)
    t = h.by_name[name]
    with open(path, "rb") as f:
        f.seek(h.data_offset + t.offset)
        return f.read(t.nbytes)


def test_casts_are_bit_exact_with_ggml(daemon, tmp_path):
    specials = special_values().reshape(2, 32)
    q8 = q8_blocks().reshape(-1, 32)
    rng = np.random.default_rng(3)
    rand = (rng.standard_normal(32 * 64) * 10.0 ** rng.integers(-40, 38, 32 * 64)).astype(np.float32).reshape(-1, 32)
    state = {"specials": specials, "q8": q8, "random": rand}
    with ckptd.connect(daemon.target) as c:
        run = c.open_run("casts", exports=[profile(tmp_path, t) for t in ("f16", "bf16", "q8_0")],
                         model=state, schedule={"every_steps": 1})
        run.save(1, model=state)
        run.wait()
        run.close()
    wd = os.path.join(daemon.root, "casts", "weights")
    for name, x in state.items():
        x = x.reshape(-1)
        assert tensor_bytes(os.path.join(wd, "step_1.cast-f16.gguf"), name) == expected_f16(x).tobytes(), name
        assert tensor_bytes(os.path.join(wd, "step_1.cast-bf16.gguf"), name) == expected_bf16(x).tobytes(), name
        got = tensor_bytes(os.path.join(wd, "step_1.cast-q80.gguf"), name)
        want = expected_q8_0(x)
        if got != want:
            for b in range(len(want) // 34):
                assert got[b * 34:(b + 1) * 34] == want[b * 34:(b + 1) * 34], f"{name} block {b}: {x[b*32:(b+1)*32]}"
    # The checkpoint itself keeps the float32 bits, NaN payloads included.
    assert tensor_bytes(os.path.join(wd, "step_1.gguf"), "specials") == specials.tobytes()
