#!/usr/bin/python3
"""Black-box tests of `ckptctl inspect` and `ckptctl verify`.

GGUF files here come from an independent writer (a few lines of struct +
numpy below, written from the spec, sharing no code with ckptd), and the
content digest is recomputed with python3-xxhash from the documented
canonical stream (daemon/gguf/digest.h), so the format ckptd promises is
checked from outside.
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import uuid

import numpy as np
import xxhash

ARGS = None

# GGUF value type ids and the struct codes of the scalar ones.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
              "u64", "i64", "f64"]
GGML = {np.float32: (0, "f32"), np.float16: (1, "f16"), np.int8: (24, "i8"),
        np.int16: (25, "i16"), np.int32: (26, "i32"), np.int64: (27, "i64"),
        np.float64: (28, "f64")}


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype, value, elem=None):
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        out = struct.pack("<IQ", elem, len(value))
        return out + b"".join(gguf_value(elem, v) for v in value)
    return struct.pack(SCALAR[vtype], value)


def write_gguf(path, metadata, tensors, alignment=32):
    """metadata: [(key, type, value[, elem])]; tensors: [(name, numpy array)] row-major."""
    out = struct.pack("<IIQQ", 0x46554747, 3, len(tensors), len(metadata))
    for key, vtype, value, *elem in metadata:
        out += gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value, *elem)
    infos, offset, data = [], 0, b""
    for name, arr in tensors:
        ne = list(reversed(arr.shape))  # GGUF dims: fastest-varying first
        type_id, _ = GGML[arr.dtype.type]
        out += gguf_string(name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", n) for n in ne) + struct.pack("<IQ", type_id, offset)
        raw = arr.tobytes()
        infos.append({"name": name, "ne": ne, "offset": offset, "nbytes": len(raw)})
        pad = (-len(raw)) % alignment
        data += raw + b"\0" * pad
        offset += len(raw) + pad
    out += b"\0" * ((-len(out)) % alignment)
    data_offset = len(out)
    with open(path, "wb") as f:
        f.write(out + data)
    return data_offset, infos


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def ckptctl(*args):
    return subprocess.run([ARGS.ckptctl, *args], capture_output=True, text=True, timeout=60)


def canonical_digest(path):
    """The documented content digest, recomputed from `inspect --json` + raw bytes."""
    info = json.loads(ckptctl("inspect", "--json", path).stdout)
    blob = read_bytes(path)
    stream, per_tensor = b"", []
    for t in info["tensors"]:
        start = info["data_offset"] + t["offset"]
        h = xxhash.xxh3_128(blob[start:start + t["nbytes"]]).intdigest()
        per_tensor.append(f"{h:032x}")
        name = t["name"].encode()
        stream += struct.pack("<Q", len(name)) + name
        stream += struct.pack("<II", t["type_id"], len(t["ne"]))
        stream += b"".join(struct.pack("<Q", n) for n in t["ne"])
        stream += struct.pack("<QQQ", t["nbytes"], h & (2**64 - 1), h >> 64)
    return f"xxh3-128:{xxhash.xxh3_128(stream).intdigest():032x}", per_tensor, info


class InspectForeignFileTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "foreign.gguf")
        rng = np.random.default_rng(42)
        self.metadata = [
            ("general.architecture", STRING, "llama"),
            ("general.name", STRING, "tiny \u00e9 model"),
            ("llama.block_count", U32, 2),
            ("llama.context_length", U32, 4096),
            ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
            ("test.u8", U8, 255), ("test.i8", I8, -128), ("test.u16", U16, 65535),
            ("test.i16", I16, -32768), ("test.i32", I32, -7), ("test.u64", U64, 2**64 - 1),
            ("test.i64", I64, -2**63), ("test.f64", F64, 3.141592653589793),
            ("test.bool", BOOL, True),
            ("tokenizer.ggml.tokens", ARRAY, ["<s>", "</s>", "a", "b", "\u4e2d"], STRING),
            ("tokenizer.ggml.token_type", ARRAY, [3, 3, 1, 1, 1], I32),
            ("test.long_array", ARRAY, list(range(1000)), U16),
            ("general.alignment", U32, 64),
        ]
        self.tensors = [
            ("token_embd.weight", rng.standard_normal((5, 8)).astype(np.float32)),
            ("blk.0.attn_q.weight", rng.standard_normal((8, 8)).astype(np.float16)),
            ("blk.0.ffn_norm.weight", rng.standard_normal(3).astype(np.float64)),
            ("positions", np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
            ("steps", np.array([1, -2, 3], dtype=np.int64)),
        ]
        self.data_offset, self.infos = write_gguf(self.path, self.metadata, self.tensors,
                                                  alignment=64)

    def tearDown(self):
        self.dir.cleanup()

    def test_json_reports_exactly_the_content(self):
        r = ckptctl("inspect", "--json", self.path)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual(got["version"], 3)
        self.assertEqual(got["alignment"], 64)
        self.assertEqual(got["data_offset"], self.data_offset)
        self.assertEqual(got["file_size"], os.path.getsize(self.path))
        self.assertEqual(len(got["metadata"]), len(self.metadata))
        for entry, (key, vtype, value, *elem) in zip(got["metadata"], self.metadata):
            self.assertEqual(entry["key"], key)
            self.assertEqual(entry["type"], TYPE_NAMES[vtype], key)
            if vtype == F32:
                self.assertEqual(entry["value"], float(np.float32(value)), key)
            else:
                self.assertEqual(entry["value"], value, key)
            if elem:
                self.assertEqual(entry["element_type"], TYPE_NAMES[elem[0]], key)
        self.assertEqual(len(got["tensors"]), len(self.tensors))
        for t, info, (name, arr) in zip(got["tensors"], self.infos, self.tensors):
            self.assertEqual(t["name"], name)
            self.assertEqual(t["type"], GGML[arr.dtype.type][1])
            self.assertEqual(t["ne"], list(reversed(arr.shape)))
            self.assertEqual(t["offset"], info["offset"])
            self.assertEqual(t["nbytes"], arr.nbytes)

    def test_table_abbreviates_long_arrays(self):
        r = ckptctl("inspect", self.path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("[u16; 1000]", r.stdout)
        self.assertIn("... 992 more]", r.stdout)
        self.assertIn("token_embd.weight", r.stdout)
        self.assertIn("[8, 5]", r.stdout)

    def test_verify_explains_a_file_without_digest(self):
        r = ckptctl("verify", self.path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no stored digest", r.stderr)

    def test_export_of_a_foreign_file_records_its_content_uuid_as_source(self):
        # A file ckptd did not write has no general.uuid: the export names the
        # content uuid ckptd gives its tensors (the documented canonical stream,
        # recomputed here), not a refusal.
        profile = os.path.join(self.dir.name, "same.toml")
        with open(profile, "w") as f:
            f.write('name = "same"\nrename = [{ from = "{all*}", to = "{all*}" }]\n')
        out = os.path.join(self.dir.name, "out.gguf")
        r = ckptctl("export", self.path, "--profile", profile, "-o", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("its content uuid", r.stdout)
        digest, _, _ = canonical_digest(self.path)
        h = digest.split(":")[1]
        info = json.loads(ckptctl("inspect", "--json", out).stdout)
        md = {e["key"]: e["value"] for e in info["metadata"]}
        source = md["general.source.uuid"]
        self.assertTrue(source.startswith(h[:8] + "-" + h[8:12] + "-8" + h[13:16] + "-"), source)
        self.assertEqual(ckptctl("verify", out).returncode, 0)


class VerifyTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "ckpt.gguf")
        subprocess.run([ARGS.fixture_writer, self.path, os.devnull, "17"], check=True)

    def tearDown(self):
        self.dir.cleanup()

    def test_intact_file_is_ok(self):
        r = ckptctl("verify", self.path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("ok "), r.stdout)

    def test_stored_digests_match_the_documented_canonical_stream(self):
        digest, per_tensor, info = canonical_digest(self.path)
        md = {e["key"]: e["value"] for e in info["metadata"]}
        self.assertEqual(md["ckpt.content_digest"], digest)
        self.assertEqual(md["ckpt.tensor_digests"], per_tensor)
        h = digest.split(":")[1]
        uuid = h[:8] + "-" + h[8:12] + "-8" + h[13:16] + "-"
        self.assertTrue(md["general.uuid"].startswith(uuid), md["general.uuid"])

    def test_gguf_hash_uuid_matches_an_independent_uuid5(self):
        # What llama.cpp's gguf_hash.py computes: UUIDv5 (SHA-1) over every
        # tensor's bytes in file order, in the llama.cpp namespace.
        path = os.path.join(self.dir.name, "hashed.gguf")
        subprocess.run([ARGS.fixture_writer, path, os.devnull, "23", "32", "gguf-hash"], check=True)
        info = json.loads(ckptctl("inspect", "--json", path).stdout)
        blob = read_bytes(path)
        data = b"".join(blob[info["data_offset"] + t["offset"]:][:t["nbytes"]] for t in info["tensors"])
        ns = uuid.UUID("ef001206-dadc-5f6d-a15f-3359e577d4e5")
        want = str(uuid.UUID(bytes=hashlib.sha1(ns.bytes + data).digest()[:16], version=5))
        md = {e["key"]: e["value"] for e in info["metadata"]}
        self.assertEqual(md["general.uuid"], want)
        self.assertEqual(md["ckpt.uuid_scheme"], "gguf-hash")
        self.assertEqual(ckptctl("verify", path).returncode, 0)
        # The content digest is still XXH3 and still checked.
        digest, _, _ = canonical_digest(path)
        self.assertEqual(md["ckpt.content_digest"], digest)

    def test_corrupt_tensor_is_named(self):
        info = json.loads(ckptctl("inspect", "--json", self.path).stdout)
        t = info["tensors"][2]
        with open(self.path, "r+b") as f:
            f.seek(info["data_offset"] + t["offset"])
            b = f.read(1)
            f.seek(info["data_offset"] + t["offset"])
            f.write(bytes([b[0] ^ 0xFF]))
        r = ckptctl("verify", self.path)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"tensor '{t['name']}' (index 2)", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_malformed_files_fail_with_one_line(self):
        blob = read_bytes(self.path)
        for n in (0, 3, 20, 100, len(blob) // 2):
            with open(self.path, "wb") as f:
                f.write(blob[:n])
            for cmd in ("inspect", "verify"):
                r = ckptctl(cmd, self.path)
                self.assertEqual(r.returncode, 1, (cmd, n, r.stderr))
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn("malformed GGUF", r.stderr)

    def test_missing_file_and_usage(self):
        r = ckptctl("verify", os.path.join(self.dir.name, "nope.gguf"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("No such file or directory", r.stderr)
        self.assertEqual(ckptctl("inspect").returncode, 2)
        self.assertEqual(ckptctl("frobnicate").returncode, 2)
        # Every daemon command comes from one table: a partial or unknown
        # subcommand is a usage error, never another command.
        for argv in (("retention",), ("retention", "frobnicate", "r"), ("pin", "r", "1")):
            r = ckptctl(*argv, "--socket", "unix:/nonexistent/ckptd.sock")
            self.assertEqual(r.returncode, 2, argv)
            self.assertNotIn("cannot reach ckptd", r.stderr, argv)

    def test_every_positional_is_described_in_help(self):
        # "RUN TEXT REQUIRED" alone tells nobody what to give.
        for argv in (("ls",), ("latest",), ("show",), ("import",), ("pin",), ("unpin",),
                     ("restore-check",), ("lineage",), ("retention", "plan"), ("fetch",),
                     ("inspect",), ("verify",)):
            r = ckptctl("help", *argv)
            self.assertEqual(r.returncode, 0, (argv, r.stderr))
            block = r.stdout.split("Positionals:", 1)[1].split("Options:", 1)[0]
            lines = [line for line in block.splitlines() if line.strip()]
            self.assertTrue(lines, argv)
            for line in lines:
                self.assertGreater(len(line.split(None, 3)), 3, (argv, line))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckptctl", required=True)
    parser.add_argument("--fixture-writer", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])
