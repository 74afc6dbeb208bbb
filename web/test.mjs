// The browser test: serves web/ on 127.0.0.1, opens the demo in headless Chromium (WebGPU on
// SwiftShader), and checks
//   1. the JaccardLoss value and gradient of a fixed mask/logits against the float64 reference
//      (numbers from `cargo run --release --example web_expected`), and the IoU shown;
//   2. that clicking "Train" lowers the loss (gradient steps on the device), then a screenshot;
//   3. every public conformance case (tests/cases/public.json and public-smp.json) through the wasm build: each
//      case of a loss implemented on the GPU must pass; the others are counted as skipped;
//   4. that a browser without WebGPU gets a clear message;
//   5. the npm package as a user installs it: the tarball of build.sh installed into an empty
//      folder, its package.json fields, `tsc --strict --noEmit` on a usage file, and a page that
//      imports it by name through an import map under a CSP of script-src 'self'
//      'wasm-unsafe-eval' (web/tests/app: every public case through the typed API, GradOpts,
//      disposal, tensors recognised by class, and raw WebGPU kernels sharing ml.device with
//      deepml's loss);
//   6. the benchmark page (bench.html) at a small size, its table, chart and JSON, read by
//      `deepml bench --compare tests/bench/lavapipe.json <the page's JSON>`.
// Ends with "N passed, M failed"; exits non-zero on any failure.
//   node web/test.mjs            (after web/build.sh; web/test.sh does both)
//   DEEPML_WEB_ONLY=package,bench node web/test.mjs   (some sections: demo, package, bench)
//   DEEPML_WEB_BENCH_SIZE=262144 DEEPML_WEB_BENCH_JSON=browser.json   (the bench's size; keep its JSON)
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "./server.mjs";

const WEB = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(WEB);
const ONLY = process.env.DEEPML_WEB_ONLY?.split(",").map((s) => s.trim());
const want = (section) => !ONLY || ONLY.includes(section);
const W = 64;

// `cargo run --release --example web_expected` (float64 reference, examples/web_expected.rs).
const EXPECTED = {
  loss: 8.701916790301688e-1,
  grad_l1: 8.592340265190827e-2,
  grad_probes: [
    [0, 1.522010544964149e-6],
    [2214, -1.149124175402575e-4],
    [1300, 7.432921062216433e-6],
    [4095, 2.451821473907935e-6],
  ],
};

/** The fixed test state, built exactly as examples/web_expected.rs builds it. */
function fixedState() {
  const logits = [], target = [];
  for (let y = 0; y < W; y++)
    for (let x = 0; x < W; x++) {
      const dx = x - 38, dy = y - 34;
      target.push(dx * dx + dy * dy <= 14 * 14 ? 1 : 0);
      const ripple = ((x * 7 + y * 13) % 17) - 8;
      const inside = x >= 12 && x < 36 && y >= 12 && y < 36;
      logits.push(Math.fround(ripple / 4 + (inside ? 2 : -2)));
    }
  return { logits, target };
}

let passed = 0, failed = 0, skipped = 0;
function check(ok, what, detail = "") {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "PASS" : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
  return ok;
}

function chromiumPath() {
  const candidates = [process.env.CHROMIUM, "/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  const p = candidates.find((c) => c && fs.existsSync(c));
  if (!p) throw new Error("no Chromium found (apt-get install chromium, or set CHROMIUM)");
  return p;
}

const ARGS = [
  "--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
  "--use-vulkan=swiftshader", "--use-angle=swiftshader", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
];

async function waitState(page, timeout = 180_000) {
  await page.waitForFunction(() => document.body.dataset.state, null, { timeout });
  return page.evaluate(() => document.body.dataset.state);
}

async function main() {
  const { server, url } = await serve(0);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "deepml-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    args: ARGS,
    viewport: { width: 1400, height: 820 },
  });
  // Only the local servers (this one, and the package test's): anything else is refused.
  await context.route(/.*/, (route) =>
    route.request().url().startsWith("http://127.0.0.1:") ? route.continue() : route.abort());
  try {
    if (want("demo")) await demo(context, url);
    if (want("package")) await packageTest(context);
    if (want("bench")) await benchTest(context, url);
  } finally {
    await context.close();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function demo(context, url) {
  {
    const page = await context.newPage();
    const pageErrors = [];
    page.on("console", (m) => m.type() === "error" && pageErrors.push(m.text()));
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    console.log(`== ${url} in ${chromiumPath()}`);
    const t0 = Date.now();
    await page.goto(url);
    const state = await waitState(page);
    if (!check(state === "ready", "the demo starts on WebGPU", `state ${state} after ${Date.now() - t0} ms`)) {
      console.log(await page.locator("#status").innerText());
      return;
    }
    const adapter = await page.evaluate(() => window.deepmlDemo.adapter);
    console.log(`   adapter: ${JSON.stringify(adapter.gpuAdapterInfo)}, wgpu: ${adapter.summary}; subgroups ${adapter.subgroups}, f16 ${adapter.shaderF16}, ` +
      `max binding ${adapter.maxStorageBufferBindingSize} B`);

    // 1. The loss of a fixed state against the float64 reference.
    const fixed = fixedState();
    const r = await page.evaluate(({ l, t }) => window.deepmlDemo.setState(l, t), { l: fixed.logits, t: fixed.target });
    check(Math.abs(r.loss - EXPECTED.loss) <= 1e-5, "JaccardLoss of the fixed mask vs the f64 reference",
      `got ${r.loss}, expected ${EXPECTED.loss} (diff ${(r.loss - EXPECTED.loss).toExponential(2)}, tol 1e-5)`);
    const l1 = r.grad.reduce((s, v) => s + Math.abs(v), 0);
    check(Math.abs(l1 - EXPECTED.grad_l1) <= 1e-4 * EXPECTED.grad_l1, "gradient L1 norm vs the reference",
      `got ${l1}, expected ${EXPECTED.grad_l1}`);
    const gmax = Math.max(...r.grad.map(Math.abs));
    const bad = EXPECTED.grad_probes.filter(([i, e]) => Math.abs(r.grad[i] - e) > 1e-4 * Math.abs(e) + 1e-5 * gmax);
    check(bad.length === 0, "gradient at probe pixels vs the reference",
      EXPECTED.grad_probes.map(([i, e]) => `[${i}] ${r.grad[i].toExponential(6)} vs ${e.toExponential(6)}`).join(", "));
    const shown = await page.evaluate(() => window.deepmlDemo.state());
    check(Number(shown.shownLoss) === r.loss && Math.abs(Number(shown.shownIou) - (1 - EXPECTED.loss)) <= 1e-5,
      "the page shows the loss and IoU = 1 - loss", `loss ${shown.shownLoss}, IoU ${shown.shownIou}`);

    // 1b. A tensor of another DeepML (another GPUDevice): a typed error, never a panic.
    const foreign = await page.evaluate(() => window.deepmlDemo.foreignTensor());
    for (const [what, e] of Object.entries(foreign.errors))
      check(e?.kind === "invalid_input" && /another context/.test(e.message),
        `${what} refuses a tensor of another DeepML`, e ? `[${e.kind}] ${e.message.slice(0, 160)}` : "accepted");
    const sig = 1 / (1 + Math.exp(-0.5));
    check(Math.abs(foreign.loss - (1 - sig)) <= 1e-6 && Number.isFinite(foreign.otherLoss),
      "both DeepML objects still compute after the refusals", `loss ${foreign.loss}, other ${foreign.otherLoss}`);

    // 2. Train from the page's starting prediction ("Reset prediction"): the loss falls.
    await page.click("#reset");
    const before = await page.evaluate(() => window.deepmlDemo.settled());
    await page.click("#train");
    const t1 = Date.now();
    // The screenshot (for the README) shows the prediction on its way to the mask.
    await page.waitForFunction(() => window.deepmlDemo.state().steps >= 12, null, { timeout: 120_000 });
    const shot = path.join(WEB, "screenshot.png");
    await page.screenshot({ path: shot });
    console.log(`   screenshot: ${shot}`);
    await page.waitForFunction(() => window.deepmlDemo.state().steps >= 200, null, { timeout: 120_000 });
    await page.click("#train");
    await page.waitForFunction(() => !window.deepmlDemo.state().training, null, { timeout: 10_000 });
    await page.waitForTimeout(300);
    const after = await page.evaluate(() => window.deepmlDemo.state());
    const ms = Date.now() - t1;
    check(after.loss < before - 0.3, "Train lowers the loss",
      `${before.toFixed(5)} -> ${after.loss.toFixed(5)} in ${after.steps} steps (${ms} ms, ${(after.steps / ms * 1000).toFixed(0)} steps/s)`);

    // 3. The public conformance cases through the wasm build.
    const t2 = Date.now();
    const results = [];
    for (const file of ["/cases/public.json", "/cases/public-smp.json"])
      results.push(...await page.evaluate((f) => window.deepmlDemo.runCases(f), file));
    const byLoss = {};
    for (const c of results) {
      const s = (byLoss[c.loss] ??= { pass: 0, fail: 0, skip: 0 });
      s[c.status]++;
      if (c.status === "skip") skipped++;
      else check(c.status === "pass", `case ${c.name}`, c.status === "pass" ? `worst ${c.worst.toExponential(2)}` : c.detail);
    }
    console.log(`   ${results.length} public cases in ${Date.now() - t2} ms:`);
    for (const [loss, s] of Object.entries(byLoss))
      console.log(`   ${loss.padEnd(28)} ${s.pass} pass, ${s.fail} fail, ${s.skip} skip${s.skip ? " (not on the GPU in this build)" : ""}`);
    if (skipped) console.log(`SKIP ${skipped} cases of losses not implemented on the GPU in this build`);
    // Once every loss is on the GPU, DEEPML_WEB_STRICT=1 makes a skipped case a failure.
    if (process.env.DEEPML_WEB_STRICT === "1") check(skipped === 0, "no public case is skipped", `${skipped} skipped`);
    if (pageErrors.length) console.log(`   page console errors:\n     ${pageErrors.join("\n     ")}`);

    // 4. Without WebGPU: a clear message, not a blank page.
    const nogpu = await context.newPage();
    await nogpu.addInitScript(() =>
      Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined, configurable: true }));
    await nogpu.goto(url);
    const s2 = await waitState(nogpu, 30_000);
    const msg = await nogpu.locator("#status").innerText();
    check(s2 === "nogpu" && /WebGPU is not available/.test(msg), "without WebGPU the page says so", msg.slice(0, 60));
    await page.close();
    await nogpu.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 5. The package, installed from its tarball into an empty folder.

async function packageTest(context) {
  const tarballs = fs.readdirSync(WEB).filter((f) => /^deepml-.*\.tgz$/.test(f));
  if (!check(tarballs.length === 1, "build.sh made one package tarball (npm pack)", tarballs.join(", ") || "none")) return;
  const app = fs.mkdtempSync(path.join(os.tmpdir(), "deepml-app-"));
  try {
    fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "deepml-user-app", private: true, type: "module" }, null, 2));
    const t0 = Date.now();
    const npm = spawnSync("npm", ["install", path.join(WEB, tarballs[0]), "--prefer-offline", "--no-audit", "--no-fund"],
      { cwd: app, encoding: "utf8" });
    if (!check(npm.status === 0, "npm install of the tarball into an empty folder", `${Date.now() - t0} ms ${npm.stderr.trim().slice(-300)}`)) return;
    const pkgDir = path.join(app, "node_modules", "deepml");
    const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
    const cargoVersion = /^version = "([^"]+)"/m.exec(fs.readFileSync(path.join(ROOT, "Cargo.toml"), "utf8"))[1];
    check(pkg.name === "deepml" && pkg.version === cargoVersion && pkg.type === "module" && pkg.sideEffects === false &&
      pkg.types === "./deepml.d.ts" && pkg.exports?.["."]?.import === "./deepml.js" && pkg.exports?.["."]?.types === "./deepml.d.ts" &&
      Array.isArray(pkg.files) && !pkg.private,
      "the package.json has name, version, type, exports, types, files, sideEffects", `${pkg.name}@${pkg.version}, files ${pkg.files}`);
    const installed = fs.readdirSync(pkgDir).sort();
    check(pkg.files.every((f) => installed.includes(f)) && installed.every((f) => f === "package.json" || pkg.files.includes(f)),
      "the installed package holds exactly its files", installed.join(", "));
    const wasm = fs.readFileSync(path.join(pkgDir, "deepml_core_bg.wasm"));
    const gz = (await import("node:zlib")).gzipSync(wasm, { level: 9 }).length;
    check(gz <= 250 * 1024, "the wasm is under 250 KB gzipped", `${wasm.length} bytes, ${gz} gzipped`);
    const js = fs.readFileSync(path.join(pkgDir, "deepml.js"), "utf8") + fs.readFileSync(path.join(pkgDir, "deepml_core.js"), "utf8");
    check(!/new Function\(|\beval\(/.test(js), "the package's JavaScript has no eval and no new Function");

    // tsc --strict on a usage file, against the installed package and its types.
    for (const f of ["usage.ts", "index.html", "main.js"]) fs.copyFileSync(path.join(WEB, "tests", "app", f), path.join(app, f));
    fs.copyFileSync(path.join(ROOT, "tests", "cases", "public.json"), path.join(app, "public.json"));
    const tsc = spawnSync(path.join(WEB, "node_modules", ".bin", "tsc"),
      ["--strict", "--noEmit", "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler",
        "--lib", "es2022,dom,esnext.disposable", "usage.ts"],
      { cwd: app, encoding: "utf8" });
    check(tsc.status === 0, "tsc --strict --noEmit type-checks the usage file (and each @ts-expect-error is an error)",
      (tsc.stdout + tsc.stderr).trim().slice(0, 1500) || "no diagnostics");
    // The same file with one refused line made plain must fail: the types are not `any`.
    const bad = fs.readFileSync(path.join(app, "usage.ts"), "utf8").replace("// @ts-expect-error: a misspelt option", "");
    fs.writeFileSync(path.join(app, "usage-bad.ts"), bad);
    const tscBad = spawnSync(path.join(WEB, "node_modules", ".bin", "tsc"),
      ["--strict", "--noEmit", "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler",
        "--lib", "es2022,dom,esnext.disposable", "usage-bad.ts"],
      { cwd: app, encoding: "utf8" });
    check(tscBad.status !== 0 && /isMultiClass/.test(tscBad.stdout), "tsc refuses a misspelt option", tscBad.stdout.trim().split("\n")[0]);

    // The page: the import map's hash is the only inline script the CSP allows.
    const html = fs.readFileSync(path.join(app, "index.html"), "utf8");
    const importMap = /<script type="importmap">([\s\S]*?)<\/script>/.exec(html)[1];
    const hash = crypto.createHash("sha256").update(importMap).digest("base64");
    const csp = `default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'sha256-${hash}'`;
    const { server, url } = await serve(0, "127.0.0.1", { root: app, headers: { "content-security-policy": csp } });
    const page = await context.newPage();
    const errors = [];
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    page.on("pageerror", (e) => errors.push(String(e)));
    try {
      const t1 = Date.now();
      await page.goto(url);
      await page.waitForFunction(() => document.body.dataset.state === "done", null, { timeout: 300_000 });
      const results = await page.evaluate(() => window.results);
      console.log(`   the package page: ${results.length} checks in ${Date.now() - t1} ms under CSP "${csp.replace(hash, "…")}"`);
      check(results.length >= 20, "the package page ran its checks", `${results.length}`);
      for (const r of results) check(r.ok, `[package] ${r.name}`, r.detail);
      // The only violation is the page's own eval probe.
      const violations = await page.evaluate(() => window.cspViolations);
      check(violations.length === 1 && violations[0].blocked === "eval", "no CSP violation besides the page's eval probe",
        JSON.stringify(violations).slice(0, 400));
      if (errors.length) console.log(`   page console errors:\n     ${errors.join("\n     ")}`);
    } finally {
      await page.close();
      server.close();
    }
  } finally {
    fs.rmSync(app, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// 6. The benchmark page, and its JSON read by `deepml bench --compare`.

const BENCH_LOSSES = ["JaccardLoss", "DiceLoss", "BCEWithLogitsLoss", "WeightedBCEWithLogitsLoss", "RMSELoss",
  "MSELoss", "L1Loss", "CrossEntropyLoss", "ContrastiveLoss"];

async function benchTest(context, url) {
  const size = Number(process.env.DEEPML_WEB_BENCH_SIZE ?? 65536);
  const page = await context.newPage();
  try {
    const t0 = Date.now();
    await page.goto(`${url}bench.html?size=${size}&runs=3&warmup=1&only=${BENCH_LOSSES.join(",")}&autorun=1`);
    await page.waitForFunction(() => ["done", "error", "nogpu"].includes(document.body.dataset.state), null, { timeout: 600_000 });
    const state = await page.evaluate(() => document.body.dataset.state);
    if (!check(state === "done", "the benchmark page runs", `state ${state} after ${Date.now() - t0} ms ${state === "error" ? await page.locator("#error").innerText() : ""}`)) return;
    const report = await page.evaluate(() => window.benchReport);
    const adapter = await page.evaluate(() => document.getElementById("adapter").textContent);
    const json = await page.locator("#json").inputValue();
    const shown = JSON.parse(json);
    const timestamp = /timestamp queries/.test(adapter);
    check(report.timer === (timestamp ? "timestamp" : "wall"), "the timer is timestamp queries where the adapter has them, wall time otherwise",
      `timer ${report.timer}; ${adapter.split("\n").find((l) => l.startsWith("timer"))}`);
    check(report.copy_gbps > 0 && Number.isFinite(report.copy_gbps), "the copy roofline is measured", `${report.copy_gbps.toFixed(3)} GB/s`);
    check(report.adapter.length > 0, "the report names the adapter (from GPUAdapterInfo)", report.adapter);
    const names = report.results.map((r) => r.loss);
    check(BENCH_LOSSES.every((l) => names.includes(l)) && names.length === BENCH_LOSSES.length, "every chosen loss is in the report", names.join(", "));
    check(report.results.every((r) => r.ms > 0 && r.gbps > 0 && r.of_copy > 0 && Math.abs(r.of_copy - r.gbps / r.copy_gbps) < 1e-9 && r.compulsory_bytes > 0),
      "each result has positive ms, GB/s and fraction of the copy");
    check(report.results.filter((r) => r.baseline_ms !== null).every((r) => r.baseline_ms > 0 && Math.abs(r.speedup - r.baseline_ms / r.ms) < 1e-9),
      "the per-operation baselines are timed", report.results.filter((r) => r.speedup).map((r) => `${r.loss} ${r.speedup.toFixed(1)}x`).join(", "));
    check(JSON.stringify(shown) === JSON.stringify(report), "the JSON offered is the report");
    const rows = await page.locator("#table tbody tr").count();
    const bars = await page.locator("#bars .bar").count();
    check(rows === names.length && bars === names.length, "the table and the bar chart show every loss", `${rows} rows, ${bars} bars`);
    const table = await page.evaluate(() => [...document.querySelectorAll("#table tr")].map((tr) => [...tr.children].map((c) => c.textContent).join(" | ")));
    console.log(`   copy roofline ${report.copy_gbps.toFixed(2)} GB/s (${report.timer}), ${report.results.length} losses in ${Date.now() - t0} ms:`);
    for (const line of table) console.log(`   | ${line} |`);
    const shot = path.join(os.tmpdir(), "deepml-bench-page.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`   screenshot: ${shot}`);

    // The JSON beside the native lavapipe run, by the native tool.
    const file = path.join(os.tmpdir(), `deepml-browser-bench-${process.pid}.json`);
    fs.writeFileSync(file, json);
    const native = path.join(ROOT, "tests", "bench", "lavapipe.json");
    // The tool tests/run_all.sh built (DEEPML_BIN), else cargo run: a `cargo run` resolves
    // features without the tests' dev-dependencies and would build wgpu a second time.
    const bin = process.env.DEEPML_BIN;
    const [cmd, args] = bin && fs.existsSync(bin)
      ? [bin, ["bench", "--compare", native, file]]
      : ["cargo", ["run", "--release", "-q", "--features", "cli", "--", "bench", "--compare", native, file]];
    const cmp = spawnSync(cmd, args, { cwd: ROOT, encoding: "utf8", maxBuffer: 1 << 24 });
    const out = cmp.stdout ?? "";
    check(cmp.status === 0 && BENCH_LOSSES.every((l) => out.includes(`| ${l} |`)),
      "deepml bench --compare reads the browser's JSON beside a native run", `${cmd} ${args.join(" ")}: exit ${cmp.status} ${(cmp.stderr ?? "").trim().slice(-400)}`);
    console.log(out.trim().split("\n").map((l) => `   ${l}`).join("\n"));
    fs.rmSync(file, { force: true });
    if (process.env.DEEPML_WEB_BENCH_JSON) fs.writeFileSync(process.env.DEEPML_WEB_BENCH_JSON, json);

    // The wall-time path (what an adapter without timestamp-query gets).
    await page.goto(`${url}bench.html?size=${size}&runs=3&warmup=1&only=MSELoss,L1Loss&timer=wall&autorun=1`);
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 300_000 });
    const wall = await page.evaluate(() => window.benchReport);
    check(wall?.timer === "wall" && wall.results.length === 2 && wall.results.every((r) => r.ms > 0 && r.of_copy > 0) && wall.copy_gbps > 0,
      "the benchmark page times with wall time on request (timer=wall)",
      wall ? `copy ${wall.copy_gbps.toFixed(2)} GB/s; ${wall.results.map((r) => `${r.loss} ${r.ms.toFixed(3)} ms`).join(", ")}` : "no report");
  } finally {
    await page.close();
  }
}

try {
  await main();
} catch (e) {
  check(false, "the browser test ran", String(e?.stack ?? e));
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
