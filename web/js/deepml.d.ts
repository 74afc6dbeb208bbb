// Types of the deepml package (the typed API of deepml.js over the wasm bindings).
/// <reference types="@webgpu/types" />

/** The `deepml-cases/1` error kinds a rejected call carries in `kind`. */
export type ErrorKind =
  | "invalid_input"
  | "invalid_config"
  | "shape_mismatch"
  | "label_out_of_range"
  | "not_implemented"
  | "no_adapter"
  | "device_lost"
  | "too_large"
  | "wgpu"
  | (string & {});

/** Every error deepml throws or rejects with: a JavaScript `Error` with a `kind`. */
export interface DeepMLError extends Error {
  kind: ErrorKind;
}

export type DType = "float32" | "int32" | "float16";
export type Reduction = "mean" | "sum" | "none";

// ---------------------------------------------------------------------------------------------
// The options of each loss: the Python constructors' arguments, camelCase, with their defaults.
// snake_case keys (`is_multiclass`) are accepted too.

/** `JaccardLoss(is_multiclass=False, eps=1e-7, per_class=False)`; inputs `[output, target]`. */
export interface JaccardLossOptions {
  /** Softmax over the channels (true) or a sigmoid per element (false). @default false */
  isMulticlass?: boolean;
  /** Added to the union. @default 1e-7 */
  eps?: number;
  /** The ratio of each class, then their mean (instead of one ratio over all classes). @default false */
  perClass?: boolean;
}

/** `DiceLoss(is_multiclass=False, smooth=0, eps=1e-7, per_class=False)`; inputs `[output, target]`. */
export interface DiceLossOptions {
  /** @default false */
  isMulticlass?: boolean;
  /** Added to numerator and denominator. @default 0 */
  smooth?: number;
  /** @default 1e-7 */
  eps?: number;
  /** @default false */
  perClass?: boolean;
}

/** `RMSELoss(eps=1e-6)`; inputs `[output, target]`. */
export interface RMSELossOptions {
  /** @default 1e-6 */
  eps?: number;
}

/** `MSELoss(reduction="mean")`; inputs `[input, target]`. */
export interface MSELossOptions {
  /** @default "mean" */
  reduction?: Reduction;
}

/** `L1Loss(reduction="mean")`; inputs `[input, target]`. */
export interface L1LossOptions {
  /** @default "mean" */
  reduction?: Reduction;
}

/** `WeightedBCEWithLogitsLoss(w_p=1, w_n=1, epsilon=1e-7, reduction="mean")`; inputs `[logits, labels]`. */
export interface WeightedBCEWithLogitsLossOptions {
  /** Weight of the positive term. @default 1 */
  wP?: number;
  /** Weight of the negative term. @default 1 */
  wN?: number;
  /** @default 1e-7 */
  epsilon?: number;
  /** @default "mean" */
  reduction?: Reduction;
}

/** `BCEWithLogitsLoss(weight=None, reduction="mean", pos_weight=None)`; inputs `[input, target]`. */
export interface BCEWithLogitsLossOptions {
  /** A weight broadcast over the input. @default null */
  weight?: ArrayLike<number> | null;
  /** @default "mean" */
  reduction?: Reduction;
  /** A weight of the positive term per class (the last dimension). @default null */
  posWeight?: ArrayLike<number> | null;
}

/** `CrossEntropyLoss(weight=None, ignore_index=-100, reduction="mean", label_smoothing=0)`;
 *  inputs `[input, target]` (target: int32 class labels, or float32 class probabilities). */
export interface CrossEntropyLossOptions {
  /** A weight per class. @default null */
  weight?: ArrayLike<number> | null;
  /** Labels equal to it are skipped. @default -100 */
  ignoreIndex?: number;
  /** @default "mean" */
  reduction?: Reduction;
  /** @default 0 */
  labelSmoothing?: number;
}

/** `ContrastiveLoss(margin=2, distance="euclidean", reduction="mean")`; inputs
 *  `[embeddings1, embeddings2, label]`. */
export interface ContrastiveLossOptions {
  /** @default 2 */
  margin?: number;
  /** @default "euclidean" */
  distance?: "euclidean" | "cosine";
  /** @default "mean" */
  reduction?: Reduction;
}

/** `AngularPenaltySMLoss(in_features, out_features, loss_type="arcface", eps=1e-7, s=None,
 *  m=None, normalize_weight=True, reduction="mean")`; inputs `[x, labels, weight]`. */
export interface AngularPenaltySMLossOptions {
  /** The embedding size (required). */
  inFeatures: number;
  /** The number of classes (required). */
  outFeatures: number;
  /** @default "arcface" */
  lossType?: "arcface" | "sphereface" | "cosface";
  /** @default 1e-7 */
  eps?: number;
  /** The scale; null for the loss type's default (64, 64, 30). @default null */
  s?: number | null;
  /** The margin; null for the loss type's default (0.5, 1.35, 0.4). @default null */
  m?: number | null;
  /** @default true */
  normalizeWeight?: boolean;
  /** @default "mean" */
  reduction?: Reduction;
}

/** The mode of the segmentation_models_pytorch losses. */
export type SmpMode = "binary" | "multiclass" | "multilabel";

/** segmentation_models_pytorch's `FocalLoss(mode, alpha=None, gamma=2, ignore_index=None,
 *  reduction="mean", normalized=False)` on logits; inputs `[yPred, yTrue]` (yTrue: float32
 *  targets, or int32 class labels in multiclass mode). */
export interface FocalLossOptions {
  /** Required. */
  mode: SmpMode;
  /** The weight of the positive targets; null for none. @default null */
  alpha?: number | null;
  /** @default 2 */
  gamma?: number;
  /** Targets equal to it are dropped. @default null */
  ignoreIndex?: number | null;
  /** @default "mean" */
  reduction?: Reduction;
  /** Divide by the sum of the focal factors. @default false */
  normalized?: boolean;
}

/** segmentation_models_pytorch's `TverskyLoss(mode, alpha=0.5, beta=0.5, gamma=1, smooth=0,
 *  eps=1e-7)` on logits; inputs `[yPred, yTrue]` (yTrue: float32 targets, or int32 class labels
 *  in multiclass mode). */
export interface TverskyLossOptions {
  /** Required. */
  mode: SmpMode;
  /** The weight of the false positives. @default 0.5 */
  alpha?: number;
  /** The weight of the false negatives. @default 0.5 */
  beta?: number;
  /** @default 1 */
  gamma?: number;
  /** @default 0 */
  smooth?: number;
  /** @default 1e-7 */
  eps?: number;
}

/** Each loss's options by its class name. */
export interface LossOptionsMap {
  JaccardLoss: JaccardLossOptions;
  DiceLoss: DiceLossOptions;
  RMSELoss: RMSELossOptions;
  MSELoss: MSELossOptions;
  L1Loss: L1LossOptions;
  WeightedBCEWithLogitsLoss: WeightedBCEWithLogitsLossOptions;
  BCEWithLogitsLoss: BCEWithLogitsLossOptions;
  CrossEntropyLoss: CrossEntropyLossOptions;
  ContrastiveLoss: ContrastiveLossOptions;
  AngularPenaltySMLoss: AngularPenaltySMLossOptions;
  FocalLoss: FocalLossOptions;
  TverskyLoss: TverskyLossOptions;
}

/** Each loss's inputs, in the order `compute` takes them. */
export interface LossInputsMap {
  JaccardLoss: [output: Tensor, target: Tensor];
  DiceLoss: [output: Tensor, target: Tensor];
  RMSELoss: [output: Tensor, target: Tensor];
  MSELoss: [input: Tensor, target: Tensor];
  L1Loss: [input: Tensor, target: Tensor];
  WeightedBCEWithLogitsLoss: [logits: Tensor, labels: Tensor];
  BCEWithLogitsLoss: [input: Tensor, target: Tensor];
  CrossEntropyLoss: [input: Tensor, target: Tensor];
  ContrastiveLoss: [embeddings1: Tensor, embeddings2: Tensor, label: Tensor];
  AngularPenaltySMLoss: [x: Tensor, labels: Tensor, weight: Tensor];
  FocalLoss: [yPred: Tensor, yTrue: Tensor];
  TverskyLoss: [yPred: Tensor, yTrue: Tensor];
}

export type LossName = keyof LossOptionsMap;

/** `isMulticlass` -> `is_multiclass`. */
export type SnakeCase<S extends string> = S extends `${infer H}${infer T}`
  ? `${H extends Lowercase<H> ? H : `_${Lowercase<H>}`}${SnakeCase<T>}`
  : S;

/** The same options with Python's snake_case keys. */
export type SnakeCaseOptions<T> = { [K in keyof T as SnakeCase<K & string>]: T[K] };

/** A loss's options: camelCase, or snake_case as in Python. */
export type LossOptions<N extends LossName> = LossOptionsMap[N] | SnakeCaseOptions<LossOptionsMap[N]>;

/** Losses whose options are all optional. */
export type LossWithDefaults = { [N in LossName]: {} extends LossOptionsMap[N] ? N : never }[LossName];

// ---------------------------------------------------------------------------------------------

/** How gradients are made (deepml's `GradOpts`). */
export interface GradOpts {
  /** Every gradient is multiplied by it (an upstream gradient). @default 1 */
  scale?: number;
  /** Where to write each gradient (same shape as its input); null makes a new tensor. The
   *  result's `grads` then holds these same Tensor objects. */
  into?: ReadonlyArray<Tensor | null | undefined>;
  /** Add to the values already in `into` instead of overwriting them. @default false */
  accumulate?: boolean;
}

/** A tensor on the GPU. Only a `DeepML` makes one: a plain object is never taken for a tensor. */
export declare class Tensor implements Disposable {
  #private;
  private constructor();
  readonly shape: number[];
  readonly dtype: DType;
  readonly numel: number;
  /** The GPUBuffer holding the values, on `ml.device`: bind it in your own kernels (it has
   *  STORAGE, COPY_SRC and COPY_DST usage). Valid until the tensor is disposed. */
  readonly buffer: GPUBuffer;
  /** Where the values start in `buffer`, in bytes. */
  readonly byteOffset: number;
  /** The bytes of the values (numel times 4, or 2 for float16). */
  readonly byteLength: number;
  readonly disposed: boolean;
  /** The values, read back: Float32Array (float32 and float16) or Int32Array (int32). */
  read(): Promise<Float32Array | Int32Array>;
  /** Overwrites the values (float32 and float16 tensors; same element count). */
  write(data: ArrayLike<number>): void;
  /** Releases this handle on the device memory. Idempotent. */
  dispose(): void;
  /** The same as `dispose()`. */
  free(): void;
  [Symbol.dispose](): void;
}

/** Values read back by `Loss.compute`. */
export declare class LossResult {
  #private;
  private constructor();
  /** The loss: one value, or one per element (reduction "none"). */
  readonly loss: Float32Array;
  /** The gradients, in the order of `gradNames`. */
  readonly grads: Float32Array[];
  readonly gradNames: string[];
  /** `loss[0]`. */
  readonly value: number;
  /** The gradient of an input by its name. */
  grad(name: string): Float32Array;
}

/** Tensors kept on the device by `Loss.computeOnDevice`. */
export declare class DeviceLossResult implements Disposable {
  #private;
  private constructor();
  readonly loss: Tensor;
  readonly grads: Tensor[];
  readonly gradNames: string[];
  grad(name: string): Tensor;
  /** Releases the loss and the gradients this result made (not those written `into` yours). */
  dispose(): void;
  free(): void;
  [Symbol.dispose](): void;
}

/** A loss with its options, built once by `ml.loss(...)`, computed many times. */
export declare class Loss<N extends LossName = LossName> implements Disposable {
  #private;
  private constructor();
  readonly name: N;
  readonly inputNames: string[];
  readonly gradNames: string[];
  /** The loss and its gradients, read back. */
  compute(inputs: LossInputsMap[N], opts?: GradOpts): Promise<LossResult>;
  /** The loss and its gradients, kept on the device (nothing is read back). */
  computeOnDevice(inputs: LossInputsMap[N], opts?: GradOpts): DeviceLossResult;
  dispose(): void;
  free(): void;
  [Symbol.dispose](): void;
}

/** The adapter and device deepml runs on. */
export interface AdapterInfo {
  name: string;
  backend: string;
  deviceType: string;
  driver: string;
  driverInfo: string;
  vendor: number;
  device: number;
  summary: string;
  /** Whether the reductions use subgroups. */
  subgroups: boolean;
  /** Whether float16 tensors are available. */
  shaderF16: boolean;
  /** Whether the benchmark can time with timestamp queries. */
  timestampQuery: boolean;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupsPerDimension: number;
  minStorageBufferOffsetAlignment: number;
  features: string[];
}

export interface CreateOptions {
  /** Where to load deepml_core_bg.wasm from (default: beside deepml_core.js). */
  wasm?: string | URL | Request | Response | BufferSource | WebAssembly.Module;
}

export interface TensorOptions {
  /** @default "float32" ("int32" for an Int32Array) */
  dtype?: DType;
}

export interface GpuBufferTensorOptions {
  /** "float32" or "float16". @default "float32" */
  dtype?: "float32" | "float16";
  /** Where the values start in the buffer (a multiple of 4). @default 0 */
  byteOffset?: number;
}

export interface BenchOptions {
  /** Elements per input tensor. @default 1048576 */
  size?: number;
  /** Timed runs per measurement (the median is reported). @default 7 */
  runs?: number;
  /** Untimed runs first (and at least a quarter of a second). @default 2 */
  warmup?: number;
  /** Only the losses whose name contains one of these. */
  only?: string[];
  /** "auto": timestamp queries where the adapter has them, else wall time; "wall": the host
   *  clock around submit and completion. @default "auto" */
  timer?: "auto" | "wall";
  /** Called with a line of text as the benchmark goes. */
  onProgress?: (line: string) => void;
}

/** One loss in a benchmark report (the format of `deepml bench --json`). */
export interface BenchResult {
  loss: string;
  shape: number[];
  ms: number;
  compulsory_bytes: number;
  gbps: number;
  copy_gbps: number;
  of_copy: number;
  baseline_ms: number | null;
  speedup: number | null;
  gflops: number | null;
}

/** A benchmark report, as `deepml bench --json` writes it (read by `deepml bench --compare`). */
export interface BenchReport {
  adapter: string;
  backend: string;
  device_type: string;
  driver: string;
  timer: "timestamp" | "wall";
  reductions: string;
  size: number;
  runs: number;
  copy_gbps: number;
  results: BenchResult[];
}

export interface CaseResult {
  name: string;
  loss: string;
  status: "pass" | "fail" | "skip";
  worst?: number;
  detail?: string;
}

/** deepml on the page's WebGPU device. */
export declare class DeepML implements Disposable {
  #private;
  private constructor();
  /** A context on the browser's WebGPU adapter; rejects with kind "no_adapter" without one. */
  static create(options?: CreateOptions): Promise<DeepML>;
  /** The GPUDevice deepml computes on: create your buffers and pipelines on it to share data. */
  readonly device: GPUDevice;
  readonly adapter: AdapterInfo;

  /** A tensor from numbers: float32 by default, float16 (where `adapter.shaderF16`), int32. */
  tensor(data: ArrayLike<number>, shape: number[], options?: TensorOptions): Tensor;
  /** An int32 tensor of class labels (a host copy is kept for range checks). */
  tensorInt(data: ArrayLike<number>, shape: number[]): Tensor;
  /** A zero-filled tensor. */
  zeros(shape: number[], dtype?: DType): Tensor;
  /** A copy of a tensor, on the device. */
  copy(t: Tensor): Tensor;
  /**
   * A tensor with the values of a GPUBuffer made on `ml.device` (usage COPY_SRC). It is a
   * GPU-side copy in queue order (wgpu 30 cannot adopt a buffer it did not create): later
   * writes to `buffer` are not seen by the tensor. A buffer of another GPUDevice fails WebGPU
   * validation, which resolves asynchronously: `read()` and `Loss.compute` wait for it and then
   * reject with `invalid_input`, and the tensor refuses every later use.
   */
  tensorFromGpuBuffer(buffer: GPUBuffer, shape: number[], options?: GpuBufferTensorOptions): Tensor;

  /** A loss by its class name and options. */
  loss<N extends LossWithDefaults>(name: N, options?: LossOptions<N>): Loss<N>;
  loss<N extends LossName>(name: N, options: LossOptions<N>): Loss<N>;

  /** `x += a * y` on the device. */
  axpy(x: Tensor, a: number, y: Tensor): void;
  /** Resolves when the GPU has finished the work submitted so far. */
  flush(): Promise<void>;
  isImplemented(name: string, options?: object | string): boolean;
  inputNames(name: string, options?: object | string): string[];

  /** The old string API: a loss by name and a JSON text (or object) of its options. */
  compute(name: string, options: object | string | undefined, inputs: Tensor[], opts?: GradOpts): Promise<LossResult>;
  /** The old string API, outputs kept on the device. */
  computeOnDevice(name: string, options: object | string | undefined, inputs: Tensor[], opts?: GradOpts): DeviceLossResult;

  /** Runs a deepml-cases/1 file (its JSON text) through the GPU. */
  runCases(json: string): Promise<CaseResult[]>;
  /** The benchmark on this device: a report in the format of `deepml bench --json`
   *  (`JSON.stringify` it for `deepml bench --compare`). */
  bench(options?: BenchOptions): Promise<BenchReport>;

  /** Releases deepml's losses and pooled memory; the GPUDevice stays (others may share it). */
  dispose(): void;
  free(): void;
  [Symbol.dispose](): void;
}

/** Loads the wasm module (once); `DeepML.create` calls it. */
export declare function init(options?: CreateOptions): Promise<void>;

/** The snake_case JSON config of an options object (what the core parses). */
export declare function configJson(options?: object | string | null): string;

/** `init`, as in wasm-bindgen modules: `import init, { DeepML } from "deepml"`. */
export default init;
