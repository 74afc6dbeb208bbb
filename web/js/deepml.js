// deepml for JavaScript: the typed API over the wasm bindings (deepml_core.js, made by
// wasm-bindgen from src/web.rs). Types: deepml.d.ts. Nothing here compiles code from strings,
// so the package runs under a CSP of `script-src 'self' 'wasm-unsafe-eval'`.
import initCore, { RawContext } from "./deepml_core.js";

let ready = null;

/**
 * Loads and instantiates the wasm module (once). `DeepML.create()` calls it; call it yourself
 * only to load the .wasm from somewhere else: `init({ wasm: url })`.
 */
export function init(options = {}) {
  ready ??= initCore(options.wasm === undefined ? undefined : { module_or_path: options.wasm }).then(() => undefined);
  return ready;
}

/** A JavaScript Error with the deepml error kind in `kind`. */
function fail(kind, message) {
  const e = new Error(message);
  e.kind = kind;
  return e;
}

const disposeSymbol = typeof Symbol.dispose === "symbol" ? Symbol.dispose : Symbol.for("Symbol.dispose");

// ---------------------------------------------------------------------------------------------
// Options: camelCase (or snake_case) objects -> the snake_case JSON the core parses.

const snake = (k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The options as the core's JSON config: keys in snake_case, typed arrays as arrays. */
export function configJson(options) {
  if (options === undefined || options === null) return "{}";
  if (typeof options === "string") return options; // the old API's JSON text
  if (typeof options !== "object" || Array.isArray(options))
    throw fail("invalid_config", "the options must be an object");
  const out = {};
  for (const [k, v] of Object.entries(options)) {
    if (v === undefined) continue;
    const key = snake(k);
    if (Object.hasOwn(out, key)) throw fail("invalid_config", `the option ${key} is given twice (${k})`);
    out[key] = ArrayBuffer.isView(v) ? Array.from(v) : v;
  }
  return JSON.stringify(out);
}

// ---------------------------------------------------------------------------------------------
// Tensors.

const NEW = Symbol("deepml.internal");

/** A tensor on the GPU. Made by a `DeepML` (`tensor`, `tensorInt`, `zeros`, `tensorFromGpuBuffer`)
 *  or returned by `Loss.computeOnDevice`. */
export class Tensor {
  #raw;
  #ml;
  #owned;
  #error = null;
  #pending = null;

  /** @internal */
  constructor(token, ml, raw, owned = true) {
    if (token !== NEW) throw fail("invalid_input", "tensors are made by a DeepML: ml.tensor(data, shape)");
    this.#ml = ml;
    this.#raw = raw;
    this.#owned = owned;
  }

  /** @internal The core tensor; throws if disposed or if `t` is not a Tensor. */
  static raw(t, what = "the tensor") {
    if (!(t instanceof Tensor) || !(#raw in t))
      throw fail("invalid_input", `${what} must be a deepml Tensor (made by ml.tensor, ml.zeros, ...), got ${describe(t)}`);
    if (!t.#raw) throw fail("invalid_input", `${what} has been disposed`);
    if (t.#error) throw t.#error;
    return t.#raw;
  }

  /** @internal A copy whose validation resolves later (tensorFromGpuBuffer): `read` and
   *  `Loss.compute` wait for it, and a failed one makes the tensor unusable. */
  static pending(t, validation) {
    t.#pending = validation.then((e) => {
      t.#pending = null;
      if (e) t.#error = e;
    });
  }

  /** @internal Resolves once the tensor's pending validation (if any) is done. */
  static async settled(t) {
    if (t instanceof Tensor && #pending in t && t.#pending) await t.#pending;
  }

  /** @internal The DeepML this tensor belongs to. */
  static owner(t) {
    return t.#ml;
  }

  get #core() {
    return Tensor.raw(this);
  }
  /** The shape. */
  get shape() {
    return this.#core.shape;
  }
  /** "float32", "int32" or "float16". */
  get dtype() {
    return this.#core.dtype;
  }
  /** The number of elements. */
  get numel() {
    return this.#core.numel;
  }
  /** The GPUBuffer that holds the values (on `ml.device`); valid until this tensor is disposed. */
  get buffer() {
    return this.#core.buffer;
  }
  /** Where the values start in `buffer`, in bytes. */
  get byteOffset() {
    return this.#core.byteOffset;
  }
  /** The bytes of the values. */
  get byteLength() {
    return this.#core.byteLength;
  }
  /** Whether `dispose()` has been called. */
  get disposed() {
    return !this.#raw;
  }
  /** Reads the values back: a Float32Array (float32, float16) or Int32Array (int32). */
  async read() {
    if (this.#pending) await this.#pending;
    return this.#core.read();
  }
  /** Overwrites the values in place (float32 or float16 tensors, same element count). */
  write(data) {
    this.#core.write(data instanceof Float32Array ? data : Float32Array.from(data));
  }
  /** Releases this handle on the device memory (the memory goes back to deepml's pool once
   *  nothing else holds it). Idempotent. */
  dispose() {
    const r = this.#raw;
    this.#raw = null;
    if (r && this.#owned) r.free();
  }
  /** The same as `dispose()` (the name the old API used). */
  free() {
    this.dispose();
  }
  [disposeSymbol]() {
    this.dispose();
  }
}

function describe(v) {
  if (v === null) return "null";
  if (typeof v !== "object") return typeof v;
  return v.constructor?.name ? `a ${v.constructor.name}` : "an object";
}

// ---------------------------------------------------------------------------------------------
// Results.

/** What `Loss.compute` resolves to: values read back to the host. */
export class LossResult {
  constructor(loss, grads, gradNames) {
    /** The loss (one value, or one per element for reduction "none"). */
    this.loss = loss;
    /** The gradients, in the order of `gradNames`. */
    this.grads = grads;
    /** The names of the inputs (or parameters) the gradients belong to. */
    this.gradNames = gradNames;
  }
  /** The first loss value. */
  get value() {
    return this.loss[0];
  }
  /** The gradient of input `name`. */
  grad(name) {
    const i = this.gradNames.indexOf(name);
    if (i < 0) throw fail("invalid_input", `no gradient named ${name} (${this.gradNames.join(", ")})`);
    return this.grads[i];
  }
}

/** What `Loss.computeOnDevice` returns: tensors that stay on the device. Dispose it (or each
 *  tensor) when done; gradients written `into` your tensors are not disposed with it. */
export class DeviceLossResult {
  #own;
  constructor(token, loss, grads, gradNames, own) {
    if (token !== NEW) throw fail("invalid_input", "made by Loss.computeOnDevice");
    this.loss = loss;
    this.grads = grads;
    this.gradNames = gradNames;
    this.#own = own;
  }
  /** The gradient of input `name`. */
  grad(name) {
    const i = this.gradNames.indexOf(name);
    if (i < 0) throw fail("invalid_input", `no gradient named ${name} (${this.gradNames.join(", ")})`);
    return this.grads[i];
  }
  /** Releases the loss tensor and the gradients this result made. */
  dispose() {
    for (const t of this.#own) t.dispose();
    this.#own = [];
  }
  free() {
    this.dispose();
  }
  [disposeSymbol]() {
    this.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Losses.

/** A loss with its options, built once and computed many times. */
export class Loss {
  #raw;
  #ml;
  /** @internal */
  constructor(token, ml, raw) {
    if (token !== NEW) throw fail("invalid_input", "losses are made by ml.loss(name, options)");
    this.#ml = ml;
    this.#raw = raw;
    /** The class name. */
    this.name = raw.name;
    /** The inputs, in the order compute takes them. */
    this.inputNames = raw.inputNames;
    /** The gradients, in the order of the results' `grads`. */
    this.gradNames = raw.gradNames;
  }

  #run(inputs, opts = {}) {
    const raw = this.#raw;
    if (!raw) throw fail("invalid_input", `this ${this.name} has been disposed`);
    if (!Array.isArray(inputs))
      throw fail("invalid_input", `${this.name}.compute takes an array of tensors (${this.inputNames.join(", ")})`);
    if (inputs.length !== this.inputNames.length)
      throw fail("invalid_input", `${this.name} takes ${this.inputNames.length} tensors (${this.inputNames.join(", ")}), got ${inputs.length}`);
    const { scale = 1, into, accumulate = false } = opts ?? {};
    if (typeof scale !== "number") throw fail("invalid_input", "GradOpts.scale must be a number");
    const intoList = into ?? [];
    if (!Array.isArray(intoList) || intoList.length > this.gradNames.length)
      throw fail("invalid_input", `GradOpts.into must be an array of at most ${this.gradNames.length} tensors or nulls`);
    if (accumulate && intoList.filter(Boolean).length === 0)
      throw fail("invalid_input", "GradOpts.accumulate adds to the tensors of GradOpts.into; none was given");
    try {
      inputs.forEach((t, i) => raw.stage(i, Tensor.raw(t, `input ${i} (${this.inputNames[i]})`)));
      intoList.forEach((t, i) => {
        if (t !== null && t !== undefined) raw.stageInto(i, Tensor.raw(t, `GradOpts.into[${i}] (${this.gradNames[i]})`));
      });
      return { out: raw.run(scale, !!accumulate), intoList };
    } catch (e) {
      raw.unstage();
      throw e;
    }
  }

  /** The loss and its gradients, kept on the device. */
  computeOnDevice(inputs, opts) {
    const { out, intoList } = this.#run(inputs, opts);
    try {
      const own = [];
      const loss = new Tensor(NEW, this.#ml, out.loss());
      own.push(loss);
      const grads = [];
      for (let i = 0; i < out.gradCount; i++) {
        const mine = intoList[i];
        if (mine) grads.push(mine);
        else {
          const g = new Tensor(NEW, this.#ml, out.grad(i));
          own.push(g);
          grads.push(g);
        }
      }
      return new DeviceLossResult(NEW, loss, grads, [...this.gradNames], own);
    } finally {
      out.free();
    }
  }

  /** The loss and its gradients, read back. */
  async compute(inputs, opts) {
    if (Array.isArray(inputs)) await Promise.all(inputs.map((t) => Tensor.settled(t)));
    const r = this.computeOnDevice(inputs, opts);
    try {
      const [loss, ...grads] = await Promise.all([r.loss.read(), ...r.grads.map((g) => g.read())]);
      return new LossResult(loss, grads, r.gradNames);
    } finally {
      r.dispose();
    }
  }

  /** Releases the loss object (its tensors are not affected). */
  dispose() {
    const r = this.#raw;
    this.#raw = null;
    r?.free();
  }
  free() {
    this.dispose();
  }
  [disposeSymbol]() {
    this.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// The context.

const DTYPES = ["float32", "int32", "float16"];

/** deepml on the page's WebGPU device. */
export class DeepML {
  #raw;
  #losses = new Map();
  /** The adapter and device: name, backend, features, limits (see `AdapterInfo`). */
  adapter;
  /** The GPUDevice deepml computes on: share it with other WebGPU code on the page. */
  device;

  /** @internal */
  constructor(token, raw) {
    if (token !== NEW) throw fail("invalid_input", "use `await DeepML.create()`");
    this.#raw = raw;
    this.adapter = raw.adapter;
    this.device = raw.device;
    // wgpu's WebGPU backend reports no adapter name; the browser's GPUAdapterInfo has one.
    const info = this.device?.adapterInfo;
    if (!this.adapter.name && info)
      this.adapter.name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ");
  }

  /** A context on the browser's WebGPU adapter; rejects with kind "no_adapter" without one. */
  static async create(options = {}) {
    await init(options);
    return new DeepML(NEW, await RawContext.create());
  }

  get #core() {
    if (!this.#raw) throw fail("invalid_input", "this DeepML has been disposed");
    return this.#raw;
  }

  #own(t, what) {
    const raw = Tensor.raw(t, what);
    return raw;
  }

  /** A tensor of `shape` from numbers: float32, or float16 with `{ dtype: "float16" }` (where
   *  `adapter.shaderF16`), or int32 labels with `{ dtype: "int32" }`. */
  tensor(data, shape, options = {}) {
    const dtype = options?.dtype ?? (data instanceof Int32Array ? "int32" : "float32");
    checkShape(shape);
    if (!DTYPES.includes(dtype)) throw fail("invalid_input", `dtype must be one of ${DTYPES.join(", ")}, not ${dtype}`);
    if (dtype === "int32") return this.tensorInt(data, shape);
    const v = data instanceof Float32Array ? data : Float32Array.from(data);
    const raw = dtype === "float16" ? this.#core.uploadF16(v, shape) : this.#core.upload(v, shape);
    return new Tensor(NEW, this, raw);
  }

  /** An int32 tensor of class labels (a host copy is kept for range checks). */
  tensorInt(data, shape) {
    checkShape(shape);
    const v = data instanceof Int32Array ? data : Int32Array.from(data);
    return new Tensor(NEW, this, this.#core.uploadInt(v, shape));
  }

  /** A zero-filled tensor. */
  zeros(shape, dtype = "float32") {
    checkShape(shape);
    return new Tensor(NEW, this, this.#core.zeros(shape, dtype));
  }

  /** A copy (on the device) of a tensor. */
  copy(t) {
    return new Tensor(NEW, this, this.#core.copy(this.#own(t, "the tensor")));
  }

  /**
   * A tensor with the values of a GPUBuffer made on `ml.device` by other code: a GPU-side copy
   * (wgpu cannot adopt a buffer it did not create), made in queue order, so work submitted
   * before on the buffer is seen. The buffer needs GPUBufferUsage.COPY_SRC.
   */
  tensorFromGpuBuffer(buffer, shape, options = {}) {
    const dtype = options?.dtype ?? "float32";
    const byteOffset = options?.byteOffset ?? 0;
    checkShape(shape);
    if (typeof GPUBuffer !== "undefined" && !(buffer instanceof GPUBuffer))
      throw fail("invalid_input", `tensorFromGpuBuffer takes a GPUBuffer, got ${describe(buffer)}`);
    if (dtype === "int32")
      throw fail("invalid_input", "tensorFromGpuBuffer makes float32 or float16 tensors (labels: ml.tensorInt)");
    const size = dtype === "float16" ? 2 : 4;
    const n = shape.reduce((a, b) => a * b, 1);
    const bytes = n * size;
    const padded = Math.ceil(bytes / 4) * 4;
    if (byteOffset % 4 !== 0) throw fail("invalid_input", `byteOffset ${byteOffset} is not a multiple of 4`);
    if (byteOffset + bytes > buffer.size)
      throw fail("invalid_input", `a ${dtype} tensor of shape [${shape}] at byte ${byteOffset} needs ${byteOffset + bytes} bytes; the buffer has ${buffer.size}`);
    if (!(buffer.usage & GPUBufferUsage.COPY_SRC))
      throw fail("invalid_input", "the buffer needs GPUBufferUsage.COPY_SRC (deepml copies it on the device)");
    const t = this.zeros(shape, dtype);
    if (bytes > 0) {
      const device = this.device;
      device.pushErrorScope("validation");
      const enc = device.createCommandEncoder({ label: "deepml tensorFromGpuBuffer" });
      // Whole words: the last half of an odd float16 count copies the padding too, when the
      // source has it.
      const len = byteOffset + padded <= buffer.size ? padded : bytes;
      enc.copyBufferToBuffer(buffer, byteOffset, t.buffer, t.byteOffset, len);
      device.queue.submit([enc.finish()]);
      // A buffer of another GPUDevice (there is no synchronous way to tell) fails validation:
      // the tensor then refuses every use, and `read`/`compute` wait for the verdict.
      Tensor.pending(t, device.popErrorScope().then((e) =>
        e ? fail("invalid_input", `tensorFromGpuBuffer: the copy failed (is the buffer from ml.device?): ${e.message}`) : null));
    }
    return t;
  }

  /** A loss by its class name and options (camelCase, or snake_case as in Python). */
  loss(name, options) {
    return new Loss(NEW, this, this.#core.loss(String(name), configJson(options)));
  }

  /** `x += a * y` on the device (a gradient step: `ml.axpy(w, -lr, grad)`). */
  axpy(x, a, y) {
    this.#core.axpy(this.#own(x, "x"), a, this.#own(y, "y"));
  }

  /** Resolves when the GPU has done the work submitted so far; rejects with a device error
   *  captured since. */
  flush() {
    return this.#core.flush();
  }

  /** Whether a loss runs on the GPU in this build. */
  isImplemented(name, options) {
    try {
      return this.#core.isImplemented(String(name), configJson(options));
    } catch (_) {
      return false;
    }
  }

  /** The input names of a loss. */
  inputNames(name, options) {
    return this.#cached(name, options).inputNames;
  }

  #cached(name, options) {
    const key = `${name}\u0000${configJson(options)}`;
    let l = this.#losses.get(key);
    if (!l) {
      l = this.loss(name, options);
      if (this.#losses.size > 64) {
        for (const v of this.#losses.values()) v.dispose();
        this.#losses.clear();
      }
      this.#losses.set(key, l);
    }
    return l;
  }

  /** The old string API: `ml.compute("JaccardLoss", '{"is_multiclass": false}', [x, t])`. */
  compute(name, options, inputs, opts) {
    try {
      return this.#cached(name, options).compute(inputs, opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The old string API, outputs kept on the device. */
  computeOnDevice(name, options, inputs, opts) {
    return this.#cached(name, options).computeOnDevice(inputs, opts);
  }

  /** Runs a deepml-cases/1 file (its JSON text): [{ name, loss, status, worst, detail }]. */
  runCases(json) {
    return this.#core.runCases(String(json));
  }

  /** The benchmark (see `BenchOptions`), on this device: a report in the format of
   *  `deepml bench --json` (JSON.stringify it for `deepml bench --compare`). */
  async bench(options = {}) {
    const { size = 1 << 20, runs = 7, warmup = 2, only = [], timer = "auto", onProgress } = options;
    if (timer !== "auto" && timer !== "wall") throw fail("invalid_input", `timer must be "auto" or "wall", not ${timer}`);
    const report = JSON.parse(await this.#core.bench(size, runs, warmup, only.join(","), timer === "wall", onProgress ?? null));
    // wgpu's WebGPU backend does not know the adapter's name: the browser's GPUAdapterInfo does.
    report.adapter ||= this.adapter.name;
    return report;
  }

  /** Releases deepml's losses and pooled memory. The GPUDevice is not destroyed (other code may
   *  share it); tensors made here must not be used afterwards. */
  dispose() {
    for (const l of this.#losses.values()) l.dispose();
    this.#losses.clear();
    const r = this.#raw;
    this.#raw = null;
    r?.trimPool();
    r?.free();
  }
  free() {
    this.dispose();
  }
  [disposeSymbol]() {
    this.dispose();
  }
}

function checkShape(shape) {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
    throw fail("invalid_input", `a shape is an array of non-negative integers, got ${JSON.stringify(shape)}`);
}

// The default export stays `init`, as wasm-bindgen's modules (and this package's first API) had
// it: `import init, { DeepML } from "deepml"` keeps working.
export default init;
