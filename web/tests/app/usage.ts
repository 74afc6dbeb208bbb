// Type-checked by the browser test with `tsc --strict --noEmit` against the installed package:
// the typed API as a user writes it, and (the @ts-expect-error lines) what the types refuse.
import init, {
  DeepML,
  Tensor,
  Loss,
  LossResult,
  DeviceLossResult,
  type JaccardLossOptions,
  type AngularPenaltySMLossOptions,
  type BenchReport,
  type DeepMLError,
  type GradOpts,
} from "deepml";

export async function usage(): Promise<number> {
  await init();
  const ml: DeepML = await DeepML.create();
  const device: GPUDevice = ml.device;
  const x: Tensor = ml.tensor(new Float32Array(2 * 3 * 16), [2, 3, 4, 4]);
  const t: Tensor = ml.zeros([2, 3, 4, 4]);
  const labels: Tensor = ml.tensorInt(new Int32Array([0, 2, 1]), [3]);
  const opts: JaccardLossOptions = { isMulticlass: true, perClass: true };
  const jac: Loss<"JaccardLoss"> = ml.loss("JaccardLoss", opts);
  const snake = ml.loss("JaccardLoss", { is_multiclass: true, per_class: true });
  const r: LossResult = await jac.compute([x, t], { scale: 2 });
  const v: number = r.value + r.loss[0] + r.grads[0][0] + r.grad("output")[0];
  const g: GradOpts = { into: [ml.zeros([2, 3, 4, 4])], accumulate: true };
  const d: DeviceLossResult = snake.computeOnDevice([x, t], g);
  const buffer: GPUBuffer = d.grads[0].buffer;
  const offset: number = d.grads[0].byteOffset + d.grads[0].byteLength;
  const copy: Tensor = ml.tensorFromGpuBuffer(buffer, [96], { byteOffset: 0 });
  const values: Float32Array | Int32Array = await copy.read();
  {
    using mse = ml.loss("MSELoss", { reduction: "sum" });
    using out = mse.computeOnDevice([x, t]);
    ml.axpy(x, -0.1, out.grads[0]);
  }
  const arcOpts: AngularPenaltySMLossOptions = { inFeatures: 8, outFeatures: 3, lossType: "cosface", s: null };
  const arc = ml.loss("AngularPenaltySMLoss", arcOpts);
  const w = ml.tensor(new Float32Array(24), [3, 8]);
  await arc.compute([ml.tensor(new Float32Array(24), [3, 8]), labels, w]);
  ml.loss("CrossEntropyLoss", { ignoreIndex: 255, labelSmoothing: 0.1, weight: [1, 2, 3] });
  ml.loss("WeightedBCEWithLogitsLoss", { wP: 3, wN: 1 });
  ml.loss("ContrastiveLoss", { distance: "cosine", margin: 1 });
  const report: BenchReport = await ml.bench({ size: 4096, only: ["MSELoss"], onProgress: (l: string) => l.length });
  const fraction: number = report.results[0].of_copy;
  try {
    ml.loss("DiceLoss", { smooth: -1 });
  } catch (e) {
    const kind: string = (e as DeepMLError).kind;
    void kind;
  }

  // @ts-expect-error: a misspelt option
  ml.loss("JaccardLoss", { isMultiClass: true });
  // @ts-expect-error: an option of the wrong type
  ml.loss("DiceLoss", { smooth: "1" });
  // @ts-expect-error: AngularPenaltySMLoss needs inFeatures and outFeatures
  ml.loss("AngularPenaltySMLoss");
  // @ts-expect-error: no such loss
  ml.loss("HingeLoss");
  // @ts-expect-error: reduction is "mean", "sum" or "none"
  ml.loss("MSELoss", { reduction: "avg" });
  // @ts-expect-error: a plain object is not a Tensor
  await jac.compute([{ id: 1 }, t]);
  // @ts-expect-error: JaccardLoss takes two tensors
  jac.computeOnDevice([x, t, t]);
  // @ts-expect-error: only a DeepML makes tensors
  new Tensor();
  // @ts-expect-error: dtype is float32, int32 or float16
  ml.zeros([4], "float64");

  d.dispose();
  jac[Symbol.dispose]();
  ml.dispose();
  void device;
  return v + offset + values.length + fraction;
}
