// The benchmark page: deepml's `bench` on the visitor's WebGPU adapter (src/web.rs runs the
// same losses, inputs, copy roofline and per-operation baselines as `deepml bench`), shown as a
// table and a bar chart of each loss's fraction of the copy speed, and offered as the JSON of
// `deepml bench --json`. URL parameters: size, runs, warmup, only (comma-separated loss names),
// timer=wall (the host clock even where timestamp queries exist), autorun=1.
import { DeepML } from "./pkg/deepml.js";

const $ = (id) => document.getElementById(id);
const LOSSES = [
  "JaccardLoss", "DiceLoss", "BCEWithLogitsLoss", "WeightedBCEWithLogitsLoss", "RMSELoss",
  "MSELoss", "L1Loss", "CrossEntropyLoss", "ContrastiveLoss", "AngularPenaltySMLoss",
];
const params = new URLSearchParams(location.search);

function fail(html, state) {
  const s = $("status");
  s.hidden = false;
  s.className = "status bad";
  s.innerHTML = html;
  document.body.dataset.state = state;
}

const fmt = (v, d) => (v === null || v === undefined ? "–" : v.toFixed(d));
const cell = (text) => {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
};

function show(report) {
  $("roof").textContent = `${report.copy_gbps.toFixed(2)} GB/s`;
  $("timer").textContent =
    `${report.adapter || "(adapter name not reported)"} — ${report.backend}, ${report.device_type}; ` +
    `timer: ${report.timer}; reductions: ${report.reductions}; ${report.size} elements; median of ${report.runs} runs`;
  const body = $("table").tBodies[0];
  body.replaceChildren();
  const bars = $("bars");
  bars.replaceChildren();
  for (const r of report.results) {
    const tr = document.createElement("tr");
    tr.dataset.loss = r.loss;
    tr.append(
      cell(r.loss), cell(`[${r.shape.join(", ")}]`), cell(r.ms.toFixed(3)), cell(r.gbps.toFixed(2)),
      cell(r.copy_gbps.toFixed(2)), cell(`${(100 * r.of_copy).toFixed(0)}%`), cell(fmt(r.baseline_ms, 3)),
      cell(r.speedup ? `${r.speedup.toFixed(1)}x` : "–"), cell(fmt(r.gflops, 1)),
    );
    body.append(tr);
    const bar = document.createElement("div");
    bar.className = "bar";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = r.loss;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = r.of_copy > 1 ? "fill over" : "fill";
    fill.style.display = "block";
    fill.style.width = `${Math.min(100, 100 * r.of_copy).toFixed(1)}%`;
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * r.of_copy).toFixed(0)}%`;
    bar.append(name, track, pct);
    bars.append(bar);
  }
}

async function main() {
  if (!navigator.gpu) {
    fail("<b>WebGPU is not available in this browser.</b> The benchmark runs WebGPU compute " +
      "shaders: use a browser with WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ on " +
      "Windows), on a page served over https or from localhost.", "nogpu");
    return;
  }
  let ml;
  try {
    ml = await DeepML.create();
  } catch (e) {
    fail(`<b>Could not start deepml on WebGPU:</b> ${e?.message ?? e}`, e?.kind === "no_adapter" ? "nogpu" : "error");
    return;
  }
  const a = ml.adapter;
  const probe = await navigator.gpu.requestAdapter();
  const gi = probe?.info ?? {};
  const gpuName = [gi.vendor, gi.architecture, gi.device, gi.description].filter(Boolean).join(" / ");
  $("adapter").textContent = [
    `adapter   ${gpuName || a.name || "(not reported)"}`,
    `type      ${a.deviceType}`,
    `timer     ${a.timestampQuery ? "timestamp queries" : "wall time (no timestamp-query)"}`,
    `subgroups ${a.subgroups}   shader-f16 ${a.shaderF16}`,
  ].join("\n");

  // The loss choices; ArcFace (a fixed 1024x512x10000 problem) is off by default on a CPU adapter.
  const only = params.get("only")?.split(",").map((s) => s.trim()).filter(Boolean);
  for (const name of LOSSES) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = only ? only.includes(name) : !(name === "AngularPenaltySMLoss" && a.deviceType === "Cpu");
    label.append(box, ` ${name}`);
    $("losses").append(label);
  }
  if (params.has("size")) {
    const opt = document.createElement("option");
    opt.value = params.get("size");
    opt.textContent = params.get("size");
    $("size").append(opt);
    $("size").value = params.get("size");
  }
  if (params.has("runs")) $("runs").value = params.get("runs");

  let json = "";
  const filename = () => `deepml-bench-${(gpuName || a.name || "browser").replace(/[^A-Za-z0-9]+/g, "-")}.json`;
  $("download").addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([json], { type: "application/json" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = filename();
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  $("copy").addEventListener("click", () => navigator.clipboard?.writeText(json));

  async function run() {
    const chosen = [...$("losses").querySelectorAll("input:checked")].map((b) => b.value);
    if (!chosen.length) return;
    $("run").disabled = true;
    $("error").hidden = true;
    $("log").textContent = "";
    document.body.dataset.state = "running";
    try {
      const report = await ml.bench({
        size: Number($("size").value),
        runs: Number($("runs").value),
        warmup: Number(params.get("warmup") ?? 2),
        timer: params.get("timer") === "wall" ? "wall" : "auto",
        only: chosen,
        onProgress: (line) => ($("log").textContent += `${line}\n`),
      });
      // `only` matches by substring (BCEWithLogitsLoss is part of WeightedBCEWithLogitsLoss):
      // keep exactly the losses chosen.
      report.results = report.results.filter((r) => chosen.includes(r.loss));
      json = `${JSON.stringify(report, null, 2)}\n`;
      $("json").value = json;
      $("download").disabled = $("copy").disabled = false;
      show(report);
      window.benchReport = report;
      document.body.dataset.state = "done";
    } catch (e) {
      $("error").hidden = false;
      $("error").textContent = `${e?.kind ? `[${e.kind}] ` : ""}${e?.message ?? e}`;
      document.body.dataset.state = "error";
    } finally {
      $("run").disabled = false;
    }
  }
  $("run").addEventListener("click", run);

  $("status").hidden = true;
  $("app").hidden = false;
  document.body.dataset.state = "ready";
  if (params.get("autorun") === "1") run();
}

main().catch((e) => fail(`<b>Unexpected error:</b> ${e?.message ?? e}`, "error"));
