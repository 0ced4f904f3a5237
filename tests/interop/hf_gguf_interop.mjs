// Interop: files written by ckptd's GGUF writer are parsed by
// @huggingface/gguf (a parser no one here wrote) with identical metadata
// values and types, and identical tensor infos.
//   node hf_gguf_interop.mjs PATH/TO/gguf_fixture_writer
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(join(process.env.NODE_PATH ?? process.cwd(), "x.js"));
const { gguf } = require("@huggingface/gguf");

const writer = process.argv[2];
const F32 = 6, F64 = 12, BOOL = 7, STRING = 8, ARRAY = 9;

// The same exact-string form the fixture writer uses for expected values.
function exact(value, type) {
  if (type === STRING) return value;
  if (type === BOOL) return value ? "true" : "false";
  if (type === F32 || type === F64) {
    if (Number.isNaN(value)) return "nan";
    const view = new DataView(new ArrayBuffer(8));
    if (type === F32) {
      view.setFloat32(0, value, true);
      return view.getUint32(0, true).toString(16);
    }
    view.setFloat64(0, value, true);
    return view.getBigUint64(0, true).toString(16);
  }
  return String(value); // number or bigint
}

const cases = [
  [1, 32], [2, 32], [3, 64], [4, 1], [5, 4096], [6, 32], [7, 128], [8, 32],
];

for (const [seed, alignment] of cases) {
  test(`seed ${seed}, alignment ${alignment}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "ckptd-interop-"));
    try {
      const file = join(dir, "f.gguf");
      const expectedPath = join(dir, "f.json");
      execFileSync(writer, [file, expectedPath, String(seed), String(alignment)]);
      const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
      const parsed = await gguf(file, { allowLocalFile: true, typedMetadata: true });
      const typed = parsed.typedMetadata;

      assert.equal(typed.version.value, 3);
      assert.equal(typed.kv_count.value, BigInt(expected.metadata.length));
      assert.equal(typed.tensor_count.value, BigInt(expected.tensors.length));
      for (const e of expected.metadata) {
        const got = typed[e.key];
        assert.ok(got, `key ${e.key} missing`);
        assert.equal(got.type, e.type, `type of ${e.key}`);
        if (e.type === ARRAY) {
          assert.equal(got.subType, e.element_type, `element type of ${e.key}`);
          assert.deepEqual(got.value.map((v) => exact(v, e.element_type)), e.value, e.key);
        } else {
          assert.equal(exact(got.value, e.type), e.value, e.key);
        }
      }
      assert.equal(parsed.tensorDataOffset, BigInt(expected.data_offset));
      assert.equal(parsed.tensorInfos.length, expected.tensors.length);
      parsed.tensorInfos.forEach((t, i) => {
        const want = expected.tensors[i];
        assert.equal(t.name, want.name);
        assert.equal(t.n_dims, want.ne.length);
        assert.deepEqual(t.shape.map(String), want.ne);
        assert.equal(t.dtype, want.type);
        assert.equal(t.offset, BigInt(want.offset));
      });
      // @huggingface/gguf 0.4.6 reads zeros past a truncated end instead of
      // failing, so check the data really is in the file.
      const last = expected.tensors.at(-1);
      const end = BigInt(expected.data_offset) + BigInt(last.offset) + BigInt(last.nbytes);
      const size = BigInt(statSync(file).size);
      assert.ok(end <= size, `last tensor ends at ${end}, file has ${size} bytes`);
      assert.equal(size, BigInt(expected.file_size));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
