// node hf_check_files.mjs FILE.gguf...: each file parses with
// @huggingface/gguf, carries general.architecture and a general.uuid, and
// every tensor's data lies inside the file (0.4.6 does not check that).
import { statSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(join(process.env.NODE_PATH ?? process.cwd(), "x.js"));
const { gguf } = require("@huggingface/gguf");

const BYTES = { 0: 4, 1: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8, 30: 2 };
let failed = 0;
for (const file of process.argv.slice(2)) {
  try {
    const { metadata, tensorInfos, tensorDataOffset } = await gguf(file, { allowLocalFile: true });
    if (!metadata["general.architecture"]) throw new Error("no general.architecture");
    if (!/^[0-9a-f-]{36}$/.test(metadata["general.uuid"] ?? "")) throw new Error("no general.uuid");
    const size = BigInt(statSync(file).size);
    for (const t of tensorInfos) {
      const elems = t.shape.reduce((a, b) => a * b, 1n);
      const bytes = BYTES[t.dtype] ? elems * BigInt(BYTES[t.dtype]) : elems;  // quantized: lower bound
      if (tensorDataOffset + t.offset + bytes > size) throw new Error(`tensor ${t.name} past end of file`);
    }
    console.log(`ok ${file}: ${tensorInfos.length} tensors, uuid ${metadata["general.uuid"]}`);
  } catch (e) {
    failed++;
    console.log(`FAILED ${file}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
