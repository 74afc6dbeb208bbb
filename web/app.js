// The segmentation-IoU demo: a painted ground-truth mask, a prediction made of logits, and
// deepml's JaccardLoss with its gradient computed on the GPU through WebGPU; "Train" runs
// gradient steps on the device (computeOnDevice + axpy), reading back only what is drawn.
import { DeepML } from "./pkg/deepml.js";

const W = 64;
const N = W * W;
const SHAPE = [1, 1, W, W];
const LOSS = "JaccardLoss";
const OPTIONS = { isMulticlass: false };
// The old string API (a JSON text of snake_case keys), kept as a thin layer over ml.loss.
const CONFIG = JSON.stringify({ is_multiclass: false });
const STEPS_PER_FRAME = 4;

const $ = (id) => document.getElementById(id);

/** Shows a message instead of the demo. */
function fail(html, state) {
  const s = $("status");
  s.className = "status bad";
  s.innerHTML = html;
  document.body.dataset.state = state;
}

function showError(e) {
  const el = $("error");
  el.hidden = false;
  el.textContent = `${e?.kind ? `[${e.kind}] ` : ""}${e?.message ?? e}`;
  console.error(e);
}

const sigmoid = (x) => 1 / (1 + Math.exp(-x));

/** The starting prediction: a soft blob up and to the left of the default mask. */
function initialLogits() {
  const l = new Float32Array(N);
  for (let y = 0; y < W; y++)
    for (let x = 0; x < W; x++) {
      const d = Math.hypot(x - 24, y - 26) / 13;
      l[y * W + x] = 3 * (1 - d * d);
    }
  return l;
}

/** The starting ground truth: an ellipse down and to the right. */
function initialTarget() {
  const t = new Float32Array(N);
  for (let y = 0; y < W; y++)
    for (let x = 0; x < W; x++) {
      const dx = (x - 38) / 16, dy = (y - 38) / 11;
      t[y * W + x] = dx * dx + dy * dy <= 1 ? 1 : 0;
    }
  return t;
}

async function main() {
  if (!navigator.gpu) {
    fail(
      "<b>WebGPU is not available in this browser.</b> This demo computes the loss in WebGPU " +
        "compute shaders. Use a browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, " +
        "Firefox 141+ on Windows), on a page served over https or from localhost.",
      "nogpu",
    );
    return;
  }
  let probe = null;
  try {
    probe = await navigator.gpu.requestAdapter();
  } catch (_) {
    probe = null;
  }
  if (!probe) {
    fail(
      "<b>WebGPU is present but no GPU adapter is available</b> (navigator.gpu.requestAdapter() " +
        "returned null: the GPU may be blocklisted or disabled). Try enabling hardware " +
        "acceleration, or another browser or machine.",
      "nogpu",
    );
    return;
  }

  let ml;
  try {
    ml = await DeepML.create();
  } catch (e) {
    fail(`<b>Could not start deepml on WebGPU:</b> ${e?.message ?? e}`, "error");
    return;
  }
  let jaccard;
  try {
    jaccard = ml.loss(LOSS, OPTIONS); // built once, computed every step
  } catch (e) {
    fail(`<b>${LOSS} is not available:</b> ${e?.message ?? e}`, "error");
    return;
  }

  const info = ml.adapter;
  // wgpu's WebGPU backend does not report the adapter's name: the browser's GPUAdapterInfo does.
  const gi = probe.info ?? {};
  info.gpuAdapterInfo = { vendor: gi.vendor, architecture: gi.architecture, device: gi.device, description: gi.description };
  info.browserFeatures = [...probe.features].sort();
  const gpuName = [gi.vendor, gi.architecture, gi.device, gi.description].filter(Boolean).join(" / ");
  $("adapter").textContent = [
    `adapter    ${gpuName || info.name || "(not reported)"}`,
    `backend    ${info.backend}`,
    `type       ${info.deviceType}`,
    `driver     ${[info.driver, info.driverInfo].filter(Boolean).join(" ") || "–"}`,
    `vendor     0x${info.vendor.toString(16)}  device 0x${info.device.toString(16)}`,
    `subgroups  ${info.subgroups}   shader-f16 ${info.shaderF16}`,
    `max storage binding ${(info.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB`,
    `max buffer ${(info.maxBufferSize / 2 ** 20).toFixed(0)} MiB`,
    `features   ${info.browserFeatures.join(", ") || "–"}`,
  ].join("\n");

  // --- state: host copies for painting and drawing, device tensors for the math
  const target = initialTarget();
  let logits = initialLogits();
  const logitsT = ml.tensor(logits, SHAPE);
  const targetT = ml.tensor(target, SHAPE);
  let targetDirty = false;
  let needsEval = true;
  let training = false;
  let busy = false;
  let steps = 0;
  let last = null;
  let gradMax = 0;
  const history = [];

  // Normalised gradient descent: the learning rate is the largest logit change of one step,
  // divided by the largest |gradient| of the last frame read back (the Jaccard gradient scales
  // like 1 / |union|, so a fixed rate would be too slow for large masks, too fast for small).
  const stepSize = () => Number($("lr").value);
  const showLr = () => ($("lrv").textContent = stepSize().toFixed(2));
  $("lr").addEventListener("input", showLr);
  showLr();

  // --- drawing
  const view = $("view").getContext("2d");
  const gradCtx = $("grad").getContext("2d");
  const viewImg = view.createImageData(W, W);
  const gradImg = gradCtx.createImageData(W, W);

  function drawView() {
    const d = viewImg.data;
    for (let i = 0; i < N; i++) {
      const p = sigmoid(logits[i]), t = target[i];
      const a = t * (1 - p), b = p * (1 - t), c = t * p, z = (1 - t) * (1 - p);
      d[4 * i] = 235 * a + 40 * b + 245 * c + 12 * z;
      d[4 * i + 1] = 70 * a + 170 * b + 235 * c + 14 * z;
      d[4 * i + 2] = 60 * a + 235 * b + 245 * c + 18 * z;
      d[4 * i + 3] = 255;
    }
    view.putImageData(viewImg, 0, 0);
  }

  function drawGrad(grad) {
    let m = 0;
    for (let i = 0; i < N; i++) m = Math.max(m, Math.abs(grad[i]));
    const d = gradImg.data;
    for (let y = 0; y < W; y++)
      for (let x = 0; x < W; x++) {
        const i = y * W + x;
        const v = m > 0 ? grad[i] / m : 0;
        const a = Math.sqrt(Math.abs(v));
        let [r, g, b] = v < 0 ? [255 * a, 160 * a, 40 * a] : [70 * a, 130 * a, 255 * a];
        // the ground truth's outline, for orientation
        const t = target[i] > 0.5;
        const edge =
          (x > 0 && target[i - 1] > 0.5 !== t) || (x < W - 1 && target[i + 1] > 0.5 !== t) ||
          (y > 0 && target[i - W] > 0.5 !== t) || (y < W - 1 && target[i + W] > 0.5 !== t);
        if (edge && t) [r, g, b] = [Math.max(r, 110), Math.max(g, 110), Math.max(b, 110)];
        d[4 * i] = r;
        d[4 * i + 1] = g;
        d[4 * i + 2] = b;
        d[4 * i + 3] = 255;
      }
    gradCtx.putImageData(gradImg, 0, 0);
    $("gmax").textContent = m.toExponential(3);
    gradMax = m;
  }

  function drawCurve() {
    const c = $("curve").getContext("2d");
    const w = c.canvas.width, h = c.canvas.height;
    c.clearRect(0, 0, w, h);
    if (history.length < 2) return;
    c.strokeStyle = "#4fc3f7";
    c.lineWidth = 1.5;
    c.beginPath();
    history.forEach((v, k) => {
      const x = (k / (history.length - 1)) * (w - 4) + 2;
      const y = h - 4 - v * (h - 8);
      k ? c.lineTo(x, y) : c.moveTo(x, y);
    });
    c.stroke();
  }

  function hardIou() {
    let inter = 0, union = 0;
    for (let i = 0; i < N; i++) {
      const p = logits[i] > 0, t = target[i] > 0.5;
      inter += p && t;
      union += p || t;
    }
    return union ? inter / union : 1;
  }

  /** The loss, its gradient and the logits, computed on the device and read back. */
  async function evaluate() {
    if (targetDirty) {
      targetT.write(target);
      targetDirty = false;
    }
    const out = jaccard.computeOnDevice([logitsT, targetT]);
    try {
      const [l, g, x] = await Promise.all([out.loss.read(), out.grads[0].read(), logitsT.read()]);
      logits = x;
      last = { loss: l[0], grad: g };
    } finally {
      out.dispose();
    }
    const lossEl = $("loss");
    lossEl.textContent = last.loss.toFixed(5);
    lossEl.dataset.value = String(last.loss);
    $("iou").textContent = (1 - last.loss).toFixed(5);
    $("hiou").textContent = hardIou().toFixed(4);
    $("steps").textContent = String(steps);
    history.push(last.loss);
    if (history.length > 400) history.shift();
    drawView();
    drawGrad(last.grad);
    drawCurve();
    document.body.dataset.loss = String(last.loss);
    return last;
  }

  /** `n` gradient steps on the device: no read-back. */
  function trainSteps(n) {
    if (targetDirty) {
      targetT.write(target);
      targetDirty = false;
    }
    const a = -stepSize() / Math.max(gradMax, 1e-12);
    for (let k = 0; k < n; k++) {
      const out = jaccard.computeOnDevice([logitsT, targetT]);
      ml.axpy(logitsT, a, out.grads[0]);
      out.dispose();
      steps++;
    }
  }

  async function frame() {
    if (!busy && (training || needsEval || targetDirty)) {
      busy = true;
      try {
        if (training) trainSteps(STEPS_PER_FRAME);
        needsEval = false;
        await evaluate();
      } catch (e) {
        training = false;
        $("train").classList.remove("on");
        showError(e);
      } finally {
        busy = false;
      }
    }
    requestAnimationFrame(frame);
  }

  // --- painting
  const canvas = $("view");
  let painting = 0; // 0: no, 1: paint, -1: erase
  const brush = () => Number($("brush").value);
  $("brush").addEventListener("input", () => ($("brushv").textContent = String(brush())));
  function paintAt(ev) {
    const r = canvas.getBoundingClientRect();
    const cx = ((ev.clientX - r.left) / r.width) * W;
    const cy = ((ev.clientY - r.top) / r.height) * W;
    const rad = brush();
    const v = painting > 0 ? 1 : 0;
    for (let y = Math.max(0, Math.floor(cy - rad)); y <= Math.min(W - 1, Math.ceil(cy + rad)); y++)
      for (let x = Math.max(0, Math.floor(cx - rad)); x <= Math.min(W - 1, Math.ceil(cx + rad)); x++)
        if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= rad * rad) target[y * W + x] = v;
    targetDirty = true;
  }
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("pointerdown", (ev) => {
    painting = ev.button === 2 || ev.shiftKey ? -1 : 1;
    canvas.setPointerCapture(ev.pointerId);
    paintAt(ev);
  });
  canvas.addEventListener("pointermove", (ev) => painting && paintAt(ev));
  const stop = () => (painting = 0);
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  // --- buttons
  $("train").addEventListener("click", () => {
    training = !training;
    $("train").classList.toggle("on", training);
    $("train").textContent = training ? "Stop" : "Train";
  });
  $("reset").addEventListener("click", () => {
    logits = initialLogits();
    logitsT.write(logits);
    steps = 0;
    history.length = 0;
    needsEval = true;
  });
  $("clear").addEventListener("click", () => {
    target.fill(0);
    targetDirty = true;
  });

  // --- a hook for the browser test (web/test.mjs)
  window.deepmlDemo = {
    adapter: info,
    ml,
    /** Stops training, sets the logits and the mask, and evaluates. */
    async setState(l, t) {
      training = false;
      while (busy) await new Promise((r) => setTimeout(r, 5));
      logits = Float32Array.from(l);
      logitsT.write(logits);
      target.set(t);
      targetDirty = true;
      const r = await evaluate();
      return { loss: r.loss, iou: 1 - r.loss, grad: Array.from(r.grad) };
    },
    /** Resolves once no frame is in flight and nothing waits to be drawn. */
    async settled() {
      while (busy || needsEval || targetDirty) await new Promise((r) => setTimeout(r, 5));
      return last.loss;
    },
    state: () => ({ loss: last?.loss, steps, training, shownLoss: $("loss").dataset.value, shownIou: $("iou").textContent }),
    /** Tensors of a second DeepML (its own GPUDevice) given to this one: each call must fail
     *  with an `invalid_input` error, and this one must keep working. */
    async foreignTensor() {
      const other = await DeepML.create();
      const theirs = other.tensor(new Float32Array(N).fill(0.5), SHAPE);
      const mine = ml.tensor(new Float32Array(N).fill(0.5), SHAPE);
      const mask = ml.tensor(new Float32Array(N).fill(1), SHAPE);
      const errors = {};
      const attempt = async (what, f) => {
        try {
          await f();
          errors[what] = null;
        } catch (e) {
          errors[what] = { kind: e?.kind, message: String(e?.message ?? e) };
        }
      };
      await attempt("computeOnDevice", () => ml.computeOnDevice(LOSS, CONFIG, [mine, theirs]));
      await attempt("compute", () => ml.compute(LOSS, CONFIG, [theirs, mask]));
      await attempt("axpy", () => ml.axpy(mine, -1, theirs));
      const r = await ml.compute(LOSS, CONFIG, [mine, mask]);
      const own = await other.compute(LOSS, CONFIG, [theirs, theirs]);
      for (const t of [theirs, mine, mask]) t.free();
      other.free();
      return { errors, loss: r.loss[0], otherLoss: own.loss[0] };
    },
    /** Runs a deepml-cases/1 file fetched from `url` through the wasm build. */
    async runCases(url) {
      const text = await (await fetch(url)).text();
      return await ml.runCases(text);
    },
  };

  $("status").hidden = true;
  $("app").hidden = false;
  await evaluate();
  document.body.dataset.state = "ready";
  requestAnimationFrame(frame);
}

main().catch((e) => fail(`<b>Unexpected error:</b> ${e?.message ?? e}`, "error"));
