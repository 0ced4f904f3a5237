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

    // No run asked for: the most recently active one (llama-ft's import of
    // step 400 came last), not the first by name; counts in good English.
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForSelector(".run.sel", { timeout: 10000 });
    assert.match(await page.locator(".run.sel").innerText(), /llama-ft/);
    assert.match(await page.locator(".run[data-run='baseline']").innerText(), /\b1 checkpoint ·/);
    assert.match(await page.locator(".run[data-run='llama-ft']").innerText(), /\b4 checkpoints ·/);

    // A lineage wider than its panel opens scrolled to the run's latest.
    for (let step = 1; step <= 30; step++) importStep("long", step, 100 + step, 1 / step);
    await page.goto(`http://127.0.0.1:${port}/?run=long`);
    await page.waitForSelector("#lineage g.ckpt.latest", { timeout: 10000 });
    const view = await page.evaluate(() => {
      const w = document.querySelector("#lineage").parentNode;
      const c = document.querySelector("#lineage g.ckpt.latest circle").getBoundingClientRect();
      const b = w.getBoundingClientRect();
      return { scroll: w.scrollLeft, wide: w.scrollWidth > w.clientWidth, x: c.x, left: b.left, right: b.right };
    });
    assert.ok(view.wide, JSON.stringify(view));
    assert.ok(view.scroll > 0 && view.x >= view.left && view.x <= view.right, JSON.stringify(view));
    assert.deepEqual(errors, []);
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

// The chart and the page's states, at 1280 and 400 px: axes with ticks and
// units that fit the data (sizes from zero, in the unit that fits), one
// checkpoint as a dot, a flat series as a level line, text drawn at its
// pixel size and inside the chart, no page-wide horizontal scroll on a
// phone, a clear message for an empty and an unknown run (no event
// stream, no "reconnecting…"), a favicon (no failed request). Screenshots
// of each state go beside SCREENSHOT.png.
test("status page chart, narrow layout, empty and unknown runs", { skip: !existsSync(CHROMIUM) && "no /usr/bin/chromium" }, async () => {
  daemon?.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
  const port = await startDaemon();
  const source = join(new URL(".", import.meta.url).pathname, "..", "..");
  execFileSync("/usr/bin/python3", ["-c", `
import math, numpy as np, ckptd
c = ckptd.connect(${JSON.stringify(sock)})
c.open_run("empty", transport="stream")
c.open_run("single", transport="stream").save(1000, {"w": np.full(1000, 2, np.float32)}, metrics={"loss": 2.5})
flat = c.open_run("flat", transport="stream")
for step in (10, 20):
    flat.save(step, {"w": np.ones(1000, np.float32)}, metrics={"loss": 1.25})
many = c.open_run("many", transport="stream")
for i in range(60):
    n = (1 << 18) + i * 8192  # 1 MiB growing to ~2.9 MiB of f32
    many.save(500 * (i + 1), {"w": np.full(n, i, np.float32)},
              metrics={"loss": 3 * math.exp(-i / 15) + 0.05 * math.sin(i), "lr": 1e-3})
`], { env: { ...process.env, PYTHONPATH: process.env.CKPTD_PYTHON_LIB ?? join(source, "build", "python", "lib") } });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const shot = (name) => screenshot.replace(/\.png$/, `_${name}.png`);
  // Every text of the chart inside the chart's box, and the SVG drawn 1:1.
  const chartGeometry = (page) => page.evaluate(() => {
    const svg = document.querySelector("#chart"), box = svg.getBoundingClientRect();
    const vb = svg.viewBox.baseVal;
    const outside = [...svg.querySelectorAll("text")].map((t) => [t.textContent, t.getBoundingClientRect()])
      .filter(([, r]) => r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 ||
                         r.bottom > box.bottom + 0.5).map(([s]) => s);
    return { scale: box.width / vb.width, outside, pageWidth: document.documentElement.scrollWidth,
             texts: [...svg.querySelectorAll("text")].map((t) => t.textContent),
             sizeTicks: [...svg.querySelectorAll("text[fill='#c27c0e']")].map((t) => t.textContent) };
  });
  const messageFits = (page) => page.evaluate(() => {
    const n = document.querySelector("#note");
    return !n.hidden && n.scrollWidth <= n.clientWidth && document.documentElement.scrollWidth <= innerWidth;
  });
  try {
    for (const width of [1280, 400]) {
      const page = await browser.newPage({ viewport: { width, height: 900 } });
      const errors = [], failed = [];
      page.on("pageerror", (e) => errors.push(e.message));
      page.on("response", (r) => { if (r.status() >= 400) failed.push(r.status() + " " + r.url()); });
      page.on("requestfailed", (r) => { if (!r.url().includes("/events")) failed.push(r.url()); });

      await page.goto(`http://127.0.0.1:${port}/?run=many`);
      await page.waitForSelector("tr[data-step='30000'].latest", { timeout: 10000 });
      await page.waitForSelector("#live.on", { timeout: 5000 });
      const g = await chartGeometry(page);
      assert.ok(Math.abs(g.scale - 1) < 0.01, `chart drawn scaled by ${g.scale}`);
      assert.deepEqual(g.outside, [], "chart text outside the chart");
      assert.ok(g.pageWidth <= width, `page ${g.pageWidth} px wide in a ${width} px window`);
      assert.ok(g.texts.includes("size (MiB)"), g.texts.join("|"));
      assert.equal(g.sizeTicks[0], "0", "sizes start at zero: " + g.sizeTicks.join("|"));
      assert.ok(g.sizeTicks.length >= 3, g.sizeTicks.join("|"));
      assert.ok(g.texts.includes("step") && g.texts.includes("loss"), g.texts.join("|"));
      assert.ok(g.texts.some((t) => /^(10|15|20|25|30)k$/.test(t)), "step ticks: " + g.texts.join("|"));
      assert.equal(await page.locator("#chart polyline").count(), 2);
      assert.equal(await page.locator("link[rel=icon]").count(), 1);
      await page.screenshot({ path: shot(width > 600 ? "many_wide" : "many_narrow") });

      await page.goto(`http://127.0.0.1:${port}/?run=single`);
      await page.waitForSelector("tr[data-step='1000']", { timeout: 10000 });
      assert.equal(await page.locator("#chart polyline").count(), 0);  // one point: dots, no line
      assert.equal(await page.locator("#chart circle").count(), 2);    // size and loss
      const single = await chartGeometry(page);
      assert.deepEqual(single.outside, []);
      assert.ok(single.texts.includes("size (KiB)"), single.texts.join("|"));  // 4 KiB file
      if (width > 600) await page.screenshot({ path: shot("single"), fullPage: true });

      await page.goto(`http://127.0.0.1:${port}/?run=flat`);
      await page.waitForSelector("tr[data-step='20']", { timeout: 10000 });
      const ys = await page.locator("#chart polyline").evaluateAll((ls) => ls.map(
          (l) => new Set(l.getAttribute("points").split(" ").map((p) => p.split(",")[1])).size));
      assert.deepEqual(ys, [1, 1], "equal values draw a level line");

      await page.goto(`http://127.0.0.1:${port}/?run=empty`);
      await page.waitForFunction(() => document.querySelector("#note").innerText.includes("No checkpoints yet"),
                                 null, { timeout: 10000 });
      assert.ok(await messageFits(page), "the message fits its panel");
      assert.equal(await page.locator("#tpanel").isVisible(), false);  // the message says it all
      await page.waitForSelector("#live.on", { timeout: 5000 });  // an empty run is watched: its first save shows
      if (width > 600) await page.screenshot({ path: shot("empty"), fullPage: true });

      await page.goto(`http://127.0.0.1:${port}/?run=nope`);
      await page.waitForFunction(() => document.querySelector("#note").innerText.includes("no run named"),
                                 null, { timeout: 10000 });
      await page.waitForTimeout(1500);
      assert.match(await page.locator("#note").innerText(), /no run named “nope”/);
      assert.ok(await messageFits(page), "the message fits its panel");
      assert.equal(await page.locator("#lpanel").isVisible(), false);
      assert.equal(await page.locator("#live").innerText(), "");  // no stream, no "reconnecting…"
      assert.match(await page.locator("#title").innerText(), /Unknown run/);
      assert.equal(await page.locator(".run").count(), 4);  // the runs to pick from
      if (width <= 600) await page.screenshot({ path: shot("unknown_narrow"), fullPage: true });
      assert.deepEqual(errors, []);
      assert.deepEqual(failed.filter((f) => !f.includes("/v1/runs/nope/")), []);
      await page.close();
    }
  } finally {
    await browser.close();
  }
});
