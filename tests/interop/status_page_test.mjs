// The status page in headless Chromium (Debian's, driven by playwright-core):
// against a daemon holding fixture runs it shows the runs and checkpoint
// rows, updates live when a new checkpoint lands, and leaves a screenshot.
//   node status_page_test.mjs CKPTD CKPTCTL FIXTURE_WRITER SCREENSHOT.png
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { test, after } from "node:test";
import assert from "node:assert/strict";

const require = createRequire(join(process.env.NODE_PATH ?? process.cwd(), "x.js"));
const { chromium } = require("playwright-core");
const [ckptd, ckptctl, fixtureWriter, screenshot] = process.argv.slice(2);
const CHROMIUM = "/usr/bin/chromium";

const dir = mkdtempSync(join(tmpdir(), "ckptd-page-"));
const root = join(dir, "root");
const sock = `unix:${root}/ckptd.sock`;
let daemon;
after(() => {
  daemon?.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
});

async function startDaemon(extra = []) {
  daemon = spawn(ckptd, ["--root", root, "--listen", sock, "--http-listen", "127.0.0.1:0", ...extra]);
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("ckptd did not start:\n" + log)), 20000);
    daemon.stderr.on("data", (d) => {
      log += d;
      const m = /http: listening on 127\.0\.0\.1:(\d+)/.exec(log);
      if (m && log.includes("ready: listening")) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
}

function importStep(run, step, seed, loss, extra = []) {
  const file = join(dir, `f${seed}.gguf`);
  execFileSync(fixtureWriter, [file, "/dev/null", String(seed)]);
  return execFileSync(ckptctl, ["import", run, file, "--step", String(step), "--metric",
                                `loss=${loss}`, `--socket=${sock}`, "--json", ...extra]).toString();
}

test("status page shows runs and checkpoints and updates live", { skip: !existsSync(CHROMIUM) && "no /usr/bin/chromium" }, async () => {
  const port = await startDaemon();
  // llama-ft starts from an outside base model; ft-child is fine-tuned from
  // llama-ft's step 300 and writes an export with each checkpoint.
  const BASE = "0b5e0000-0000-8000-8000-00000000ba5e";
  const uuids = {};
  for (const [i, step] of [100, 200, 300].entries()) {
    const out = importStep("llama-ft", step, i + 1, 3 - i * 0.7, ["--base-model", BASE]);
    uuids[step] = JSON.parse(out).checkpoint.uuid;
  }
  const profile = join(dir, "same.toml");
  writeFileSync(profile, 'name = "same"\nrename = [{ from = "{all*}", to = "{all*}" }]\n');
  importStep("ft-child", 10, 7, 1.5, ["--base-model", uuids[300], "--export", profile]);
  importStep("baseline", 50, 9, 4.2);
  execFileSync(ckptctl, ["pin", "llama-ft", "100", "--reason", "eval-2026-11", `--socket=${sock}`]);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/?run=llama-ft`);
    await page.waitForSelector("tr[data-step='300']", { timeout: 10000 });
    assert.equal(await page.locator(".run").count(), 3);
    assert.match(await page.locator(".run.sel").innerText(), /llama-ft/);
    assert.equal(await page.locator("#table tbody tr").count(), 3);
    const latestRow = await page.locator("tr.latest").innerText();
    assert.match(latestRow, /300/);
    assert.match(latestRow, /★/);
    assert.match(await page.locator("tr[data-step='100']").innerText(), /eval-2026-11/);
    assert.match(await page.locator("tr[data-step='200']").innerText(), /loss=2\.300/);
    assert.equal(await page.locator("#chart polyline").count(), 2);  // loss and size
    await page.waitForSelector("#live.on", { timeout: 5000 });

    // A new checkpoint lands: the page shows it without a reload.
    importStep("llama-ft", 400, 4, 0.8);
    await page.waitForSelector("tr[data-step='400'].latest", { timeout: 5000 });
    assert.equal(await page.locator("#table tbody tr").count(), 4);
    assert.deepEqual(errors, []);

    // The lineage of the fine-tune: the outside base model, llama-ft's
    // checkpoints, the branch at step 300 into ft-child, its export as a leaf.
    await page.goto(`http://127.0.0.1:${port}/?run=ft-child`);
    await page.waitForSelector("#lineage g[data-kind='export']", { timeout: 10000 });
    const kinds = await page.locator("#lineage g.node").evaluateAll(
        (gs) => gs.map((g) => g.dataset.kind + ":" + g.dataset.uuid));
    assert.ok(kinds.includes(`base_model:${BASE}`), kinds.join(" "));
    for (const step of [100, 200, 300]) assert.ok(kinds.includes(`checkpoint:${uuids[step]}`));
    // Ancestors and descendants only: llama-ft's step 400 is neither.
    assert.equal(kinds.filter((k) => k.startsWith("checkpoint:")).length, 4);
    assert.equal(kinds.filter((k) => k.startsWith("export:")).length, 1);
    assert.equal(await page.locator("#lineage g.ckpt.latest").count(), 1);  // ft-child's step 10
    assert.equal(await page.locator("#lineage g.ckpt.pinned").count(), 1);  // llama-ft 100
    assert.equal(await page.locator("#lineage path.edge").count(), 5);
    assert.match(await page.locator("#lineage").innerHTML(), /ft-child/);
    assert.deepEqual(errors, []);
    await page.screenshot({ path: screenshot, fullPage: true });
    assert.ok(readFileSync(screenshot).length > 10000, "screenshot written");
  } finally {
    await browser.close();
  }
});

// Everything a trainer or an operator can name (metric names, pin reasons)
// is shown as text: HTML and script in it never run. With a read token the
// page works from /?token=... and drops the token from the address bar.
test("status page escapes trainer-supplied strings and works behind a read token", { skip: !existsSync(CHROMIUM) && "no /usr/bin/chromium" }, async () => {
  daemon?.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
  const token = "page-token-" + "c3".repeat(16);
  const tokenFile = join(dir, "http.token");
  writeFileSync(tokenFile, token + "\n", { mode: 0o600 });
  const cfg = join(dir, "token.toml");
  writeFileSync(cfg, `[http]\ntoken_file = "${tokenFile}"\n`);
  const port = await startDaemon(["--config", cfg]);
  const metric = "<img src=x onerror=window.__pwned=1>";
  const reason = `<script>window.__pwned=2</script>"'><svg onload=window.__pwned=3>`;
  importStep("xss", 10, 11, 1.0, ["--metric", `${metric}=2.5`]);
  execFileSync(ckptctl, ["pin", "xss", "10", "--reason", reason, `--socket=${sock}`]);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => { errors.push("dialog: " + d.message()); d.dismiss(); });
    // Without the token the data API refuses; the page says why.
    await page.goto(`http://127.0.0.1:${port}/?run=xss`);
    await page.waitForFunction(() => document.querySelector("#summary").textContent.includes("error"),
                               null, { timeout: 10000 });
    assert.match(await page.locator("#summary").innerText(), /read token/);

    await page.goto(`http://127.0.0.1:${port}/?run=xss&token=${token}`);
    await page.waitForSelector("tr[data-step='10']", { timeout: 10000 });
    await page.waitForSelector("#live.on", { timeout: 5000 });  // the event stream took the token too
    assert.ok(!page.url().includes(token), page.url());
    const row = page.locator("tr[data-step='10']");
    const text = await row.innerText();
    assert.ok(text.includes(metric), text);
    assert.ok(text.includes(reason), text);
    assert.equal(await row.locator("img, script, svg").count(), 0);
    assert.equal(await page.locator("#table img, #table script, #lineage img, #lineage script").count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
