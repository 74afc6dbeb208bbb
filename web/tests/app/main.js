// The package as a user gets it: installed from its tarball into an empty folder, imported by
// its name through an import map, under a CSP without 'unsafe-eval'. Checks the typed API on
// every public conformance case, GradOpts, disposal, tensors recognised by class, and sharing
// the GPUDevice with raw WebGPU kernels written here. Results go to window.results.
import { DeepML, Tensor, Loss, LossResult, DeviceLossResult } from "deepml";

const results = [];
const ok = (name, cond, detail = "") => results.push({ name, ok: !!cond, detail: String(detail) });
const errorOf = async (f) => {
  try {
    await f();
    return null;
  } catch (e) {
    return e;
  }
};
const camel = (k) => k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
// The rule of the conformance check (src/cases.rs): |got - exp| <= rtol |exp| + atol max|exp|.
const close = (got, exp, rtol, atol, scale) => Math.abs(got - exp) <= rtol * Math.abs(exp) + atol * scale;
const violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample }));
window.cspViolations = violations;

async function run() {
  // The CSP is in force: eval is refused, so nothing below relies on it.
  let evalRefused = false;
  try {
    new Function("return 1")();
  } catch (e) {
    evalRefused = e instanceof EvalError;
  }
  ok("the page's CSP refuses eval", evalRefused);

  const ml = await DeepML.create();
  ok("DeepML.create() through the import map", ml instanceof DeepML);
  ok("ml.device is a GPUDevice", ml.device instanceof GPUDevice, Object.prototype.toString.call(ml.device));

  // --- every public case through the typed API: options in camelCase, a Loss per case
  const file = await (await fetch("./public.json")).json();
  let passed = 0;
  const failures = [];
  for (const c of file.cases) {
    const options = Object.fromEntries(Object.entries(c.config).map(([k, v]) => [camel(k), v]));
    const made = [];
    try {
      const loss = ml.loss(c.loss, options);
      const inputs = loss.inputNames.map((n) => {
        const t = c.inputs[n];
        const x = t.dtype === "int64" ? ml.tensorInt(t.data, t.shape) : ml.tensor(t.data, t.shape);
        made.push(x);
        return x;
      });
      const r = await loss.compute(inputs);
      loss.dispose();
      if (c.expected.status !== "ok") {
        failures.push(`${c.name}: expected ${c.expected.kind}, got a result`);
        continue;
      }
      const { rtol, atol } = c.tolerance;
      const bad = [];
      const cmp = (what, got, exp) => {
        if (got.length !== exp.data.length) bad.push(`${what}: ${got.length} values, expected ${exp.data.length}`);
        else {
          const scale = exp.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          exp.data.forEach((e, i) => close(got[i], e, rtol, atol, scale) || bad.push(`${what}[${i}] ${got[i]} vs ${e}`));
        }
      };
      cmp("loss", r.loss, c.expected.loss);
      for (const g of c.grad_wrt) cmp(`grad ${g}`, r.grad(g), c.expected.grads[g]);
      if (!(r instanceof LossResult)) bad.push("not a LossResult");
      if (bad.length) failures.push(`${c.name}: ${bad.slice(0, 3).join("; ")}`);
      else passed++;
    } catch (e) {
      if (c.expected.status === "error" && e?.kind === c.expected.kind) passed++;
      else failures.push(`${c.name}: [${e?.kind}] ${e?.message ?? e}`);
    } finally {
      made.forEach((t) => t.dispose());
    }
  }
  ok(`the ${file.cases.length} public cases through ml.loss(name, camelCase options)`, failures.length === 0 && passed === file.cases.length,
    failures.length ? failures.slice(0, 5).join(" | ") : `${passed} agree`);

  // --- options: camelCase, snake_case and the old JSON text agree; a wrong key is refused
  const N = 2 * 3 * 4 * 4;
  // Logits a raw kernel computes exactly too: ((i * 37) % 17 - 8) / 4.
  const logits = Float32Array.from({ length: N }, (_, i) => (((i * 37) % 17) - 8) / 4);
  const labels = Float32Array.from({ length: N }, (_, i) => ((i % 16) * 7 + Math.floor(i / 16)) % 3 === Math.floor(i / 16) % 3 ? 1 : 0);
  const x = ml.tensor(logits, [2, 3, 4, 4]);
  const t = ml.tensor(labels, [2, 3, 4, 4]);
  const jac = ml.loss("JaccardLoss", { isMulticlass: true, perClass: true });
  ok("ml.loss returns a Loss", jac instanceof Loss && jac.name === "JaccardLoss", `${jac.inputNames} -> ${jac.gradNames}`);
  const a = await jac.compute([x, t]);
  const b = await ml.loss("JaccardLoss", { is_multiclass: true, per_class: true }).compute([x, t]);
  const s = await ml.compute("JaccardLoss", '{"is_multiclass": true, "per_class": true}', [x, t]);
  ok("camelCase, snake_case and JSON-text options give the same loss and gradient",
    a.loss.length === 1 && a.value === b.value && a.value === s.value && a.grads[0].every((g, i) => g === b.grads[0][i] && g === s.grads[0][i]),
    `${a.value} ${b.value} ${s.value}`);
  const pooled = await ml.loss("JaccardLoss", { isMulticlass: true }).compute([x, t]);
  ok("perClass changes the multiclass loss (the mean of per-class ratios)", pooled.value !== a.value, `${pooled.value} vs ${a.value}`);
  const defaults = await ml.loss("JaccardLoss").compute([x, t]);
  const explicit = await ml.loss("JaccardLoss", { isMulticlass: false, eps: 1e-7, perClass: false }).compute([x, t]);
  ok("the defaults are the SPEC's (isMulticlass false, eps 1e-7, perClass false)", defaults.value === explicit.value && defaults.loss.length === 1, defaults.value);
  const wrongKey = await errorOf(() => ml.loss("JaccardLoss", { isMultiClass: true }));
  ok("a misspelt option is an invalid_config error", wrongKey?.kind === "invalid_config", wrongKey?.message);
  const unknown = await errorOf(() => ml.loss("HingeLoss", {}));
  ok("an unknown loss is an invalid_config error", unknown?.kind === "invalid_config", unknown?.message);

  // --- tensors are recognised by class, never by a property
  const fake = await errorOf(() => jac.compute([{ id: 1 }, t]));
  ok("a plain {id} object is refused", fake?.kind === "invalid_input" && /deepml Tensor/.test(fake.message), fake?.message);
  const forged = await errorOf(() => jac.compute([Object.create(Tensor.prototype), t]));
  ok("an object made from Tensor.prototype is refused", forged?.kind === "invalid_input", forged?.message);
  const ctor = await errorOf(() => new Tensor());
  ok("new Tensor() is refused (only a DeepML makes tensors)", ctor?.kind === "invalid_input", ctor?.message);

  // --- GradOpts: scale, into, accumulate
  const base = await jac.compute([x, t]);
  const scaled = await jac.compute([x, t], { scale: -2 });
  ok("GradOpts.scale multiplies the gradient", base.grads[0].every((g, i) => Math.abs(scaled.grads[0][i] + 2 * g) <= 1e-6 * (1 + Math.abs(g))));
  const into = ml.zeros([2, 3, 4, 4]);
  const r1 = jac.computeOnDevice([x, t], { into: [into] });
  ok("GradOpts.into: the result's gradient is your tensor", r1.grads[0] === into && r1 instanceof DeviceLossResult);
  r1.dispose();
  ok("disposing the result leaves a tensor given as into", !into.disposed);
  const r2 = jac.computeOnDevice([x, t], { into: [into], accumulate: true, scale: 0.5 });
  r2.dispose();
  const acc = await into.read();
  ok("GradOpts.accumulate adds to into (1 + 0.5 times the gradient)",
    acc.every((v, i) => Math.abs(v - 1.5 * base.grads[0][i]) <= 1e-6 * (1 + Math.abs(v))), `${acc[5]} vs ${1.5 * base.grads[0][5]}`);

  // --- float16 where the adapter has it
  if (ml.adapter.shaderF16) {
    // The inputs of one call are all float32 or all float16 (these logits and labels are exact in f16).
    const h = ml.tensor(logits, [2, 3, 4, 4], { dtype: "float16" });
    const th = ml.tensor(labels, [2, 3, 4, 4], { dtype: "float16" });
    const rh = await jac.compute([h, th]);
    ok("float16 inputs give the float32 loss within f16 arithmetic", h.dtype === "float16" && Math.abs(rh.value - a.value) < 2e-3, `${rh.value} vs ${a.value}`);
    const mixed = await errorOf(() => jac.compute([h, t]));
    ok("float16 and float32 inputs in one call are an invalid_input error", mixed?.kind === "invalid_input", mixed?.message);
    h.dispose();
    th.dispose();
  } else {
    const e = await errorOf(() => ml.tensor(logits, [2, 3, 4, 4], { dtype: "float16" }));
    ok("without shader-f16 a float16 tensor is a not_implemented error", e?.kind === "not_implemented", e?.message);
  }

  // --- dispose and Symbol.dispose
  const tmp = ml.tensor([1, 2, 3, 4], [4]);
  tmp[Symbol.dispose]();
  const used = await errorOf(() => tmp.read());
  ok("a disposed tensor (Symbol.dispose) refuses further use", tmp.disposed && used?.kind === "invalid_input", used?.message);
  const l2 = ml.loss("MSELoss");
  l2.dispose();
  const lu = await errorOf(() => l2.computeOnDevice([x, x]));
  ok("a disposed Loss refuses further use", lu?.kind === "invalid_input", lu?.message);

  // --- sharing the GPUDevice: raw WebGPU kernel -> deepml's loss -> raw WebGPU kernel
  await shared(ml, x, t, logits, labels, jac);

  results.done = true;
}

/** Logits made by a raw compute shader on ml.device, deepml's JaccardLoss on them, and a second
 *  raw kernel that takes a gradient step from the gradient's GPUBuffer: nothing is read back
 *  until the end. */
async function shared(ml, x, t, logits, labels, jac) {
  const device = ml.device;
  const n = logits.length;
  const U = GPUBufferUsage;
  const produce = device.createShaderModule({
    code: `
      @group(0) @binding(0) var<storage, read_write> out: array<f32>;
      @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
        if (g.x < arrayLength(&out)) { out[g.x] = f32(i32((g.x * 37u) % 17u) - 8) / 4.0; }
      }`,
  });
  const step = device.createShaderModule({
    code: `
      @group(0) @binding(0) var<storage, read> logits: array<f32>;
      @group(0) @binding(1) var<storage, read> grad: array<f32>;
      @group(0) @binding(2) var<storage, read_write> next: array<f32>;
      @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
        if (g.x < arrayLength(&next)) { next[g.x] = logits[g.x] - 10.0 * grad[g.x]; }
      }`,
  });
  const mine = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_SRC });
  const next = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_SRC });
  const readback = device.createBuffer({ size: n * 4, usage: U.MAP_READ | U.COPY_DST });
  device.pushErrorScope("validation");
  const p1 = device.createComputePipeline({ layout: "auto", compute: { module: produce, entryPoint: "main" } });
  const p2 = device.createComputePipeline({ layout: "auto", compute: { module: step, entryPoint: "main" } });
  let enc = device.createCommandEncoder();
  let pass = enc.beginComputePass();
  pass.setPipeline(p1);
  pass.setBindGroup(0, device.createBindGroup({ layout: p1.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: mine } }] }));
  pass.dispatchWorkgroups(Math.ceil(n / 64));
  pass.end();
  device.queue.submit([enc.finish()]);

  // deepml on the buffer the raw kernel wrote (a device-side copy), then the raw step kernel
  // on deepml's gradient buffer at its offset.
  const fromRaw = ml.tensorFromGpuBuffer(mine, [2, 3, 4, 4]);
  ok("tensorFromGpuBuffer makes a Tensor with its own GPUBuffer", fromRaw instanceof Tensor && fromRaw.buffer instanceof GPUBuffer && fromRaw.buffer !== mine);
  const out = jac.computeOnDevice([fromRaw, t]);
  const g = out.grads[0];
  ok("a gradient exposes its GPUBuffer, byte offset and length",
    g.buffer instanceof GPUBuffer && Number.isInteger(g.byteOffset) && g.byteLength === n * 4 && g.byteOffset + g.byteLength <= g.buffer.size,
    `offset ${g.byteOffset}, length ${g.byteLength}, buffer ${g.buffer.size} B`);
  enc = device.createCommandEncoder();
  pass = enc.beginComputePass();
  pass.setPipeline(p2);
  pass.setBindGroup(0, device.createBindGroup({
    layout: p2.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: mine } },
      { binding: 1, resource: { buffer: g.buffer, offset: g.byteOffset, size: g.byteLength } },
      { binding: 2, resource: { buffer: next } },
    ],
  }));
  pass.dispatchWorkgroups(Math.ceil(n / 64));
  pass.end();
  enc.copyBufferToBuffer(next, 0, readback, 0, n * 4);
  device.queue.submit([enc.finish()]);
  const scopeError = await device.popErrorScope();
  ok("the raw kernels validate on ml.device", !scopeError, scopeError?.message);
  await readback.mapAsync(GPUMapMode.READ);
  const got = new Float32Array(readback.getMappedRange().slice(0));
  readback.unmap();

  // The same step on the host from deepml's own upload of the same logits.
  const hostLogits = Float32Array.from({ length: n }, (_, i) => (((i * 37) % 17) - 8) / 4);
  const ref = await jac.compute([ml.tensor(hostLogits, [2, 3, 4, 4]), t]);
  const lossOnRaw = await out.loss.read();
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i] - (hostLogits[i] - 10 * ref.grads[0][i])));
  ok("raw kernel -> deepml loss -> raw kernel on the gradient buffer matches the host path",
    worst <= 1e-6 && lossOnRaw.every((v, i) => v === ref.loss[i]), `worst ${worst.toExponential(2)}, loss ${Array.from(lossOnRaw)}`);
  out.dispose();

  const noCopy = device.createBuffer({ size: n * 4, usage: U.STORAGE });
  const e1 = await errorOf(() => ml.tensorFromGpuBuffer(noCopy, [2, 3, 4, 4]));
  ok("tensorFromGpuBuffer refuses a buffer without COPY_SRC", e1?.kind === "invalid_input", e1?.message);
  const e2 = await errorOf(() => ml.tensorFromGpuBuffer(mine, [2, 3, 4, 5]));
  ok("tensorFromGpuBuffer refuses a shape larger than the buffer", e2?.kind === "invalid_input", e2?.message);
  const e3 = await errorOf(() => ml.tensorFromGpuBuffer({ size: 1024, usage: 4 }, [4]));
  ok("tensorFromGpuBuffer refuses what is not a GPUBuffer", e3?.kind === "invalid_input", e3?.message);

  // A buffer of another GPUDevice: WebGPU refuses the copy; the tensor says so when read.
  const other = await (await navigator.gpu.requestAdapter()).requestDevice();
  const theirs = other.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_SRC });
  const foreign = ml.tensorFromGpuBuffer(theirs, [2, 3, 4, 4]);
  const e4 = await errorOf(() => foreign.read());
  const e5 = await errorOf(() => jac.computeOnDevice([foreign, t]));
  ok("a GPUBuffer of another device: the tensor's read rejects with invalid_input, and later uses too",
    e4?.kind === "invalid_input" && /another|ml\.device/.test(e4.message) && e5?.kind === "invalid_input", `${e4?.message} / ${e5?.message}`);
  const again = await jac.compute([x, t]);
  ok("deepml keeps working after the refused copy", Number.isFinite(again.value), again.value);
  other.destroy();
}

window.results = results;
run()
  .catch((e) => ok("the package page ran", false, `[${e?.kind}] ${e?.stack ?? e}`))
  .finally(() => (document.body.dataset.state = "done"));
