//! The `deepml` command-line tool: `info`, `demo`, `check`, `eval`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use deepml::cases::{self, Case, Evaluator, LossSpec, TensorData, Verdict};
use deepml::conformance::GpuEvaluator;
use deepml::*;

/// The public conformance cases, built in so the tool works anywhere.
const PUBLIC_CASES: &str = include_str!("../../tests/cases/public.json");
/// FocalLoss and TverskyLoss, made with segmentation_models_pytorch's own classes.
const PUBLIC_SMP_CASES: &str = include_str!("../../tests/cases/public-smp.json");

#[derive(Parser)]
#[command(
    name = "deepml",
    version,
    about = "Loss functions and their gradients on any GPU (wgpu)"
)]
struct Cli {
    /// Backend: vulkan, metal, dx12, gl, or all (default: WGPU_BACKEND, else all).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Only an adapter whose name contains this (default: WGPU_ADAPTER_NAME).
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every adapter found, with its limits and features.
    Info,
    /// Runs every loss on the best adapter: value, gradient norm, time.
    Demo,
    /// Runs conformance cases (default: the public set) and prints PASS/FAIL/SKIP per case.
    Check {
        files: Vec<PathBuf>,
        /// Print every case, not only failures and the summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Times value plus gradient of every loss against the copy kernel and a per-operation
    /// baseline; writes JSON and Markdown. `--compare A.json B.json` prints the ratios.
    Bench {
        /// Elements per input tensor.
        #[arg(long, default_value_t = 1 << 24)]
        size: usize,
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Only losses whose name contains one of these (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the Markdown table here.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Which losses and shapes: `default` (every loss once) or `segmentation` (cross-entropy,
        /// Jaccard and Dice (global and per class), Focal and Tversky over [N, C, H, W], C in 2,
        /// 19, 21, 64, 150, each against MSELoss over as many elements).
        #[arg(long, default_value = "default")]
        suite: String,
        /// Also time each step (shader entry point) of each loss alone: where the time goes.
        #[arg(long)]
        steps: bool,
        /// Compare two JSON reports instead of running.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        compare: Option<Vec<PathBuf>>,
    },
    /// Runs the cases of FILE and writes them back with `expected` replaced by the results.
    Eval {
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn parse_backends(s: &str) -> Result<wgpu::Backends> {
    let mut b = wgpu::Backends::empty();
    for part in s.split(',') {
        b |= match part.trim().to_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" => wgpu::Backends::all(),
            other => return Err(Error::InvalidConfig(format!("unknown backend {other:?}"))),
        };
    }
    Ok(b)
}

fn options(cli: &Cli) -> Result<ContextOptions> {
    Ok(ContextOptions {
        backends: cli.backend.as_deref().map(parse_backends).transpose()?,
        adapter_name: cli.adapter.clone(),
        ..Default::default()
    })
}

fn info(cli: &Cli) -> Result<()> {
    let adapters = pollster::block_on(context::list_adapters(&options(cli)?));
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "no adapter found (install a Vulkan driver, e.g. mesa-vulkan-drivers)".into(),
        ));
    }
    for (i, a) in adapters.iter().enumerate() {
        let r = AdapterReport::of(a);
        println!(
            "[{i}] {}{}",
            r.summary(),
            if i == 0 { "  <- best" } else { "" }
        );
        let l = &r.limits;
        println!(
            "    max_buffer_size {} MiB, max_storage_buffer_binding_size {} MiB",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20
        );
        println!(
            "    max_compute_workgroups_per_dimension {}, max_compute_invocations_per_workgroup {}, max_compute_workgroup_storage_size {} KiB",
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size >> 10
        );
        let f = r.features;
        let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
        println!(
            "    subgroups {} (sizes {} to {}), shader-f16 {}, timestamp queries {}",
            has(wgpu::Features::SUBGROUP),
            r.subgroup_sizes.0,
            r.subgroup_sizes.1,
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    Ok(())
}

/// Deterministic pseudo-random numbers for the demo inputs.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn floats(&mut self, shape: &[usize], lo: f64, hi: f64) -> TensorData {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| (lo + (hi - lo) * self.next()) as f32 as f64)
            .collect();
        TensorData {
            shape: shape.to_vec(),
            dtype: cases::DType::F32,
            data,
        }
    }
    fn binary(&mut self, shape: &[usize]) -> TensorData {
        let mut t = self.floats(shape, 0.0, 1.0);
        t.data.iter_mut().for_each(|v| *v = v.round());
        t
    }
    fn labels(&mut self, shape: &[usize], classes: usize) -> TensorData {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                (self.next() * classes as f64)
                    .floor()
                    .min(classes as f64 - 1.0)
            })
            .collect();
        TensorData {
            shape: shape.to_vec(),
            dtype: cases::DType::I64,
            data,
        }
    }
}

/// One demo case per loss, at a size that shows the GPU working.
fn demo_cases() -> Vec<Case> {
    let mut g = Gen(42);
    let mk =
        |name: &str, loss: &str, config: serde_json::Value, inputs: Vec<(&str, TensorData)>| Case {
            name: name.to_string(),
            loss: loss.to_string(),
            config: config.as_object().cloned().unwrap_or_default(),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            grad_wrt: Vec::new(),
            expected: cases::Expected::Error {
                kind: String::new(),
            },
            tolerance: cases::Tolerance {
                rtol: 0.0,
                atol: 0.0,
            },
        };
    let seg = [8, 3, 128, 128];
    let seg1 = [8, 1, 256, 256];
    let n = 1 << 20;
    vec![
        mk(
            "jaccard binary [8,1,256,256]",
            "JaccardLoss",
            serde_json::json!({"is_multiclass": false}),
            vec![
                ("output", g.floats(&seg1, -4.0, 4.0)),
                ("target", g.binary(&seg1)),
            ],
        ),
        mk(
            "jaccard multiclass [8,3,128,128]",
            "JaccardLoss",
            serde_json::json!({"is_multiclass": true}),
            vec![
                ("output", g.floats(&seg, -4.0, 4.0)),
                ("target", g.binary(&seg)),
            ],
        ),
        mk(
            "dice multiclass per class [8,3,128,128]",
            "DiceLoss",
            serde_json::json!({"is_multiclass": true, "per_class": true}),
            vec![
                ("output", g.floats(&seg, -4.0, 4.0)),
                ("target", g.binary(&seg)),
            ],
        ),
        mk(
            "rmse [1M]",
            "RMSELoss",
            serde_json::json!({}),
            vec![
                ("output", g.floats(&[n], -1.0, 1.0)),
                ("target", g.floats(&[n], -1.0, 1.0)),
            ],
        ),
        mk(
            "mse [1M]",
            "MSELoss",
            serde_json::json!({}),
            vec![
                ("input", g.floats(&[n], -1.0, 1.0)),
                ("target", g.floats(&[n], -1.0, 1.0)),
            ],
        ),
        mk(
            "l1 [1M]",
            "L1Loss",
            serde_json::json!({}),
            vec![
                ("input", g.floats(&[n], -1.0, 1.0)),
                ("target", g.floats(&[n], -1.0, 1.0)),
            ],
        ),
        mk(
            "weighted bce [1M]",
            "WeightedBCEWithLogitsLoss",
            serde_json::json!({"w_p": 3.0, "w_n": 1.0}),
            vec![
                ("logits", g.floats(&[n], -6.0, 6.0)),
                ("labels", g.binary(&[n])),
            ],
        ),
        mk(
            "bce with logits [1024,1024]",
            "BCEWithLogitsLoss",
            serde_json::json!({}),
            vec![
                ("input", g.floats(&[1024, 1024], -6.0, 6.0)),
                ("target", g.binary(&[1024, 1024])),
            ],
        ),
        mk(
            "cross entropy [1024,1000]",
            "CrossEntropyLoss",
            serde_json::json!({"label_smoothing": 0.1}),
            vec![
                ("input", g.floats(&[1024, 1000], -4.0, 4.0)),
                ("target", g.labels(&[1024], 1000)),
            ],
        ),
        mk(
            "contrastive [4096,128]",
            "ContrastiveLoss",
            serde_json::json!({}),
            vec![
                ("embeddings1", g.floats(&[4096, 128], -1.0, 1.0)),
                ("embeddings2", g.floats(&[4096, 128], -1.0, 1.0)),
                ("label", g.binary(&[4096])),
            ],
        ),
        mk(
            "arcface [512x128 -> 1000]",
            "AngularPenaltySMLoss",
            serde_json::json!({"in_features": 128, "out_features": 1000, "loss_type": "arcface"}),
            vec![
                ("x", g.floats(&[512, 128], -1.0, 1.0)),
                ("labels", g.labels(&[512], 1000)),
                ("weight", g.floats(&[1000, 128], -0.088, 0.088)),
            ],
        ),
        mk(
            "sphereface [512x128 -> 1000]",
            "AngularPenaltySMLoss",
            serde_json::json!({"in_features": 128, "out_features": 1000, "loss_type": "sphereface"}),
            vec![
                ("x", g.floats(&[512, 128], -1.0, 1.0)),
                ("labels", g.labels(&[512], 1000)),
                ("weight", g.floats(&[1000, 128], -0.088, 0.088)),
            ],
        ),
        mk(
            "cosface [512x128 -> 1000]",
            "AngularPenaltySMLoss",
            serde_json::json!({"in_features": 128, "out_features": 1000, "loss_type": "cosface"}),
            vec![
                ("x", g.floats(&[512, 128], -1.0, 1.0)),
                ("labels", g.labels(&[512], 1000)),
                ("weight", g.floats(&[1000, 128], -0.088, 0.088)),
            ],
        ),
        mk(
            "focal multiclass [4,19,64,64], ignore 255",
            "FocalLoss",
            serde_json::json!({"mode": "multiclass", "ignore_index": 255}),
            vec![
                ("y_pred", g.floats(&[4, 19, 64, 64], -4.0, 4.0)),
                ("y_true", g.labels(&[4, 64, 64], 19)),
            ],
        ),
        mk(
            "tversky multiclass [4,19,64,64]",
            "TverskyLoss",
            serde_json::json!({"mode": "multiclass", "alpha": 0.3, "beta": 0.7}),
            vec![
                ("y_pred", g.floats(&[4, 19, 64, 64], -4.0, 4.0)),
                ("y_true", g.labels(&[4, 64, 64], 19)),
            ],
        ),
    ]
}

fn upload(ctx: &LossContext, t: &TensorData) -> Result<Tensor> {
    match t.dtype {
        cases::DType::I64 => ctx.upload_labels_i64(&t.to_i64("labels")?, &t.shape),
        cases::DType::F32 => ctx.upload(&t.to_f32(), &t.shape),
    }
}

fn demo(cli: &Cli) -> Result<()> {
    let ctx = LossContext::with_options(options(cli)?)?;
    println!("adapter: {}", ctx.adapter().summary());
    println!(
        "{:<42} {:>14} {:>14} {:>10}",
        "loss", "value", "|grad|", "ms"
    );
    let mut skipped = Vec::new();
    let demos = demo_cases();
    // Every loss of the registry has its demo.
    let missing: Vec<&str> = deepml::registry::LOSSES
        .iter()
        .map(|e| e.name)
        .filter(|n| !demos.iter().any(|c| c.loss == *n))
        .collect();
    if !missing.is_empty() {
        return Err(deepml::Error::InvalidInput(format!(
            "the demo has no case of {}",
            missing.join(", ")
        )));
    }
    for case in demos {
        let spec: LossSpec = cases::loss_spec(&case)?;
        let Some(loss) = losses::gpu_loss(&spec) else {
            skipped.push(case.name.clone());
            continue;
        };
        let inputs: Vec<Tensor> = loss
            .input_names()
            .iter()
            .map(|n| upload(&ctx, case.input(n)?))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        // The first call builds the pipelines; the second is timed.
        loss.compute(&ctx, &refs)?;
        ctx.synchronize()?;
        let t0 = Instant::now();
        let out = loss.compute(&ctx, &refs)?;
        ctx.synchronize()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let value = ctx.read(&out.loss)?;
        let shown = if value.len() == 1 {
            format!("{:.6}", value[0])
        } else {
            format!("[{} values]", value.len())
        };
        let norm: f64 = out
            .grads
            .iter()
            .map(|g| {
                ctx.read(g)
                    .map(|v| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>())
            })
            .sum::<Result<f64>>()?
            .sqrt();
        println!(
            "{:<42} {:>14} {:>14.6e} {:>10.3}",
            case.name, shown, norm, ms
        );
    }
    if !skipped.is_empty() {
        println!("not implemented on the GPU yet: {}", skipped.join(", "));
    }
    Ok(())
}

fn load_files(files: &[PathBuf]) -> Result<Vec<(String, cases::CasesFile)>> {
    if files.is_empty() {
        return Ok(vec![
            ("built-in public cases".into(), cases::parse(PUBLIC_CASES)?),
            (
                "built-in public smp cases".into(),
                cases::parse(PUBLIC_SMP_CASES)?,
            ),
        ]);
    }
    files
        .iter()
        .map(|f| Ok((f.display().to_string(), cases::load(f)?)))
        .collect()
}

fn check(cli: &Cli, files: &[PathBuf], quiet: bool) -> Result<bool> {
    let ctx = LossContext::with_options(options(cli)?)?;
    let ev = GpuEvaluator { ctx: &ctx };
    println!("adapter: {}", ctx.adapter().summary());
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (name, file) in load_files(files)? {
        println!("cases: {name} ({} cases)", file.cases.len());
        for case in &file.cases {
            let verdict = cases::check_case(case, ev.eval(case));
            let line = match &verdict {
                Verdict::Pass { worst } => {
                    pass += 1;
                    format!("PASS  worst {worst:.3}")
                }
                Verdict::Fail { worst, detail } => {
                    fail += 1;
                    format!("FAIL  worst {worst:.3}  {detail}")
                }
                Verdict::Skip { reason } => {
                    skip += 1;
                    format!("SKIP  {reason}")
                }
            };
            if !quiet || matches!(verdict, Verdict::Fail { .. }) {
                println!("{:<44} {line}", case.name);
            }
        }
    }
    println!("{pass} passed, {fail} failed, {skip} skipped");
    Ok(fail == 0)
}

fn eval(cli: &Cli, file: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let ctx = LossContext::with_options(options(cli)?)?;
    let ev = GpuEvaluator { ctx: &ctx };
    let mut f = cases::load(file)?;
    f.cases = f
        .cases
        .iter()
        .map(|c| {
            let got = ev.eval(c).unwrap_or_else(|| {
                Err(Error::InvalidInput(format!(
                    "{} is not implemented on the GPU",
                    c.loss
                )))
            });
            cases::evaluated_case(c, &got)
        })
        .collect();
    if let serde_json::Value::Object(m) = &mut f.meta {
        m.insert("evaluated_by".into(), serde_json::Value::String(ev.name()));
    }
    std::fs::write(output, cases::to_json(&f))
        .map_err(|e| Error::Cases(format!("writing {}: {e}", output.display())))?;
    println!("wrote {} cases to {}", f.cases.len(), output.display());
    Ok(())
}

fn read_report(p: &std::path::Path) -> Result<bench::BenchReport> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidInput(format!("{}: {e}", p.display())))
}

fn write(p: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(p, text)
        .map_err(|e| Error::InvalidInput(format!("writing {}: {e}", p.display())))
}

#[allow(clippy::too_many_arguments)]
fn run_bench(
    cli: &Cli,
    size: usize,
    runs: usize,
    only: &[String],
    json: &Option<PathBuf>,
    markdown: &Option<PathBuf>,
    compare: &Option<Vec<PathBuf>>,
    suite: &str,
    steps: bool,
) -> Result<()> {
    if let Some(files) = compare {
        let (a, b) = (read_report(&files[0])?, read_report(&files[1])?);
        print!("{}", bench::compare(&a, &b));
        return Ok(());
    }
    let suite: bench::Suite = suite.parse()?;
    // The benchmark is what asks for timestamp queries.
    let ctx = LossContext::with_options(ContextOptions {
        timestamps: true,
        ..options(cli)?
    })?;
    eprintln!("bench on {}", ctx.adapter().summary());
    let opts = bench::BenchOptions {
        size,
        runs,
        only: only.to_vec(),
        suite,
        steps,
        ..Default::default()
    };
    let report = bench::run(&ctx, &opts, |line| eprintln!("  {line}"))?;
    let md = bench::markdown(&report);
    println!("{md}");
    if let Some(p) = json {
        write(
            p,
            &serde_json::to_string_pretty(&report)
                .map_err(|e| Error::InvalidInput(e.to_string()))?,
        )?;
    }
    if let Some(p) = markdown {
        write(p, &md)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Info => info(&cli).map(|_| true),
        Cmd::Demo => demo(&cli).map(|_| true),
        Cmd::Check { files, quiet } => check(&cli, files, *quiet),
        Cmd::Eval { file, output } => eval(&cli, file, output).map(|_| true),
        Cmd::Bench {
            size,
            runs,
            only,
            json,
            markdown,
            compare,
            suite,
            steps,
        } => run_bench(
            &cli, *size, *runs, only, json, markdown, compare, suite, *steps,
        )
        .map(|_| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("deepml: {e}");
            ExitCode::from(2)
        }
    }
}
