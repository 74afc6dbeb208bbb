//! Shader composition, pipeline keys, and the shared dispatch machinery: programs of compute
//! steps recorded into one encoder, windows over the storage-binding limit, 2-D grids over the
//! 65535-workgroups-per-dimension limit, and the deterministic tree reduction.

use crate::context::{LossContext, PoolBuf};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per workgroup of every deepml kernel (shaders/common.wgsl `WG`).
pub const WG: u32 = 256;

const COMMON: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/common.wgsl"));
const WG_TREE: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/wg_tree.wgsl"));
const WG_SUBGROUP: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/wg_subgroup.wgsl"));

/// A WGSL file of the crate with the constants it is composed with.
#[derive(Debug, Clone)]
pub struct ShaderSource {
    /// The file's name without `.wgsl`, the first part of the pipeline key.
    pub name: &'static str,
    /// The WGSL text of the file.
    pub body: &'static str,
    /// `const NAME: u32 = VALUE;` lines prepended to the body: a variant per value.
    pub consts: Vec<(&'static str, u32)>,
    /// The element type of the inputs, `In` in the shader: f32, or f16 (with `enable f16;`).
    pub f16: bool,
    /// Elements per memory access of an element-wise kernel: 1, or 4 (16-byte loads and stores
    /// of f32). The shader sees `LANES`, `V` (f32 or vec4<f32>), `InV`, `VU`, `VI` and the
    /// helpers `hsum`, `hmax`, `lanes`, `lane_of`, `unit_lane`, `ulane_of` (see `LANES_1` and `LANES_4`).
    pub lanes: u32,
    /// 0: workgroup reductions by a barrier tree (every adapter); else the subgroup size SG of
    /// an adapter whose subgroups the context verified (shaders/wg_subgroup.wgsl).
    pub subgroup: u32,
    /// The body alone, without the shared pieces (a generated kernel that needs none).
    pub standalone: bool,
    /// Created without runtime checks (no bounds checks, no loop counters): only for kernels
    /// whose every access is in range by construction (src/matmul.rs).
    pub trusted: bool,
}

/// The element-wise vocabulary of a one-lane variant.
const LANES_1: &str = "const LANES: u32 = 1u;
alias V = f32;
alias InV = In;
alias VU = u32;
alias VI = i32;
alias VB = bool;
fn hsum(v: V) -> f32 { return v; }
fn hmax(v: V) -> f32 { return v; }
fn lanes(a: f32, b: f32, c: f32, d: f32) -> V { return a; }
fn lane_of(v: V, i: u32) -> f32 { return v; }
fn unit_lane(i: u32) -> V { return 1.0; }
fn ulane_of(v: VU, i: u32) -> u32 { return v; }
";

/// ... and of a four-lane one: each access moves four consecutive elements.
const LANES_4: &str = "const LANES: u32 = 4u;
alias V = vec4<f32>;
alias InV = vec4<In>;
alias VU = vec4<u32>;
alias VI = vec4<i32>;
alias VB = vec4<bool>;
fn hsum(v: V) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn hmax(v: V) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn lanes(a: f32, b: f32, c: f32, d: f32) -> V { return V(a, b, c, d); }
fn lane_of(v: V, i: u32) -> f32 { return v[i]; }
fn unit_lane(i: u32) -> V { return select(V(0.0), V(1.0), vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(i)); }
fn ulane_of(v: VU, i: u32) -> u32 { return v[i]; }
";

impl ShaderSource {
    /// The file `name` with text `body`, in its plain variant: no constants, f32 inputs, one
    /// lane, the barrier-tree reductions.
    pub fn new(name: &'static str, body: &'static str) -> Self {
        ShaderSource {
            name,
            body,
            consts: Vec::new(),
            f16: false,
            lanes: 1,
            subgroup: 0,
            standalone: false,
            trusted: false,
        }
    }
    /// The variant that adds its gradient to the one already there (`ACCUM` 1) or writes it
    /// (`ACCUM` 0). A compile-time constant rather than a uniform flag, because some adapters
    /// (lavapipe) run both sides of a uniform branch, the accumulating load included.
    pub fn with_accumulate(self, accumulate: bool) -> Self {
        self.with("ACCUM", accumulate as u32)
    }
    /// The variant whose workgroup reductions use subgroups of `size` (None: the tree).
    pub fn with_subgroup(mut self, size: Option<u32>) -> Self {
        self.subgroup = size.unwrap_or(0);
        self
    }
    /// The variant whose element-wise kernels move `lanes` (1 or 4) elements per access.
    pub fn with_lanes(mut self, lanes: u32) -> Self {
        debug_assert!(lanes == 1 || lanes == 4);
        self.lanes = lanes;
        self
    }
    /// The variant with the constant `const NAME: u32 = value;`.
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.consts.push((name, value));
        self
    }
    /// The variant whose inputs are f16.
    pub fn with_f16(mut self, f16: bool) -> Self {
        self.f16 = f16;
        self
    }
    /// The pipeline-cache key of this variant.
    pub fn key(&self) -> String {
        let mut k = self.name.to_string();
        for (n, v) in &self.consts {
            k.push_str(&format!(":{n}={v}"));
        }
        if self.f16 {
            k.push_str(":f16");
        }
        if self.lanes != 1 {
            k.push_str(&format!(":x{}", self.lanes));
        }
        if self.subgroup != 0 {
            k.push_str(&format!(":sg{}", self.subgroup));
        }
        k
    }
    /// The full WGSL text: constants, the shared pieces, then the body.
    pub fn compose(&self) -> String {
        if self.standalone {
            return self.body.to_string();
        }
        let mut s = String::new();
        if self.f16 {
            s.push_str("enable f16;\nalias In = f16;\n");
        } else {
            s.push_str("alias In = f32;\n");
        }
        for (n, v) in &self.consts {
            s.push_str(&format!("const {n}: u32 = {v}u;\n"));
        }
        s.push_str(if self.lanes == 4 { LANES_4 } else { LANES_1 });
        if self.subgroup != 0 {
            s.push_str(&format!("const SG: u32 = {}u;\n", self.subgroup));
            s.push_str(WG_SUBGROUP);
        } else {
            s.push_str(WG_TREE);
        }
        s.push_str(COMMON);
        s.push('\n');
        s.push_str(&unroll(self.body, &self.consts));
        s
    }
}

/// Expands every loop marked `// #unroll`, `for (var i = A; i < B; i = i + 1u) { // #unroll`
/// with A a literal and B a literal or one of `consts`, into B - A blocks
/// `{ const i: u32 = k; .. }`. The body's indices by `i` are then constants: naga checks them
/// when it compiles, not at run time, and a driver sees straight-line code, so arrays indexed
/// by `i` stay in registers. A marked loop's body must not `break` or `continue` it. Nested
/// marks expand too; a bound that is not a known constant leaves the loop as it is.
pub(crate) fn unroll(body: &str, consts: &[(&str, u32)]) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some((name, from, to)) = unroll_header(line, consts) else {
            out.push_str(line);
            out.push('\n');
            i += 1;
            continue;
        };
        // The body: up to the line that closes the loop's brace.
        let mut depth = 1i32;
        let mut end = i + 1;
        while end < lines.len() {
            let code = lines[end].split("//").next().unwrap_or("");
            depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
            if depth <= 0 {
                break;
            }
            end += 1;
        }
        let inner = unroll(&lines[i + 1..end.min(lines.len())].join("\n"), consts);
        let indent = &line[..line.len() - line.trim_start().len()];
        for k in from..to {
            out.push_str(&format!(
                "{indent}{{\n{indent}    const {name}: u32 = {k}u;\n"
            ));
            out.push_str(&inner);
            out.push_str(&format!("{indent}}}\n"));
        }
        i = end + 1;
    }
    out
}

/// `(i, A, B)` of a marked loop's first line (see [`unroll`]).
fn unroll_header<'a>(line: &'a str, consts: &[(&str, u32)]) -> Option<(&'a str, u32, u32)> {
    let t = line.trim();
    let head = t.strip_suffix("// #unroll")?.trim_end().strip_suffix('{')?;
    let parts: Vec<&str> = head
        .trim_end()
        .strip_prefix("for (var ")?
        .strip_suffix(')')?
        .split(';')
        .map(str::trim)
        .collect();
    let [init, cond, step] = parts[..] else {
        return None;
    };
    let (name, from) = init.split_once('=')?;
    let name = name.trim();
    let number = |v: &str| v.trim().trim_end_matches('u').parse::<u32>().ok();
    let from = number(from)?;
    let to = cond.strip_prefix(name)?.trim().strip_prefix('<')?.trim();
    let to = number(to).or_else(|| consts.iter().find(|(n, _)| *n == to).map(|&(_, v)| v))?;
    debug_assert!(
        !step.is_empty() && step.ends_with("+ 1u"),
        "an unrolled loop steps by 1: {line}"
    );
    Some((name, from, to.max(from)))
}

/// Each variant twice: writing its gradient and adding to the gradient already there
/// (`ShaderSource::with_accumulate`).
pub(crate) fn with_accumulate_variants(v: Vec<ShaderSource>) -> Vec<ShaderSource> {
    v.into_iter()
        .flat_map(|s| [s.clone().with_accumulate(false), s.with_accumulate(true)])
        .collect()
}

/// Four elements per access where every window's length is a multiple of 4 (windows are whole
/// tiles but the last), one otherwise.
pub(crate) fn lanes_for(n: u64) -> u32 {
    if n.is_multiple_of(4) {
        4
    } else {
        1
    }
}

/// Partials per thread of reduce.wgsl (`RI`): 4 on a GPU; 16 with the CPU kernels, where a
/// workgroup of 1024 partials cost more to start than to add up (lavapipe: the per-thread
/// partials of per-class Dice at [4, 2, 512, 1024], 2 MiB, took 1.4 ms in 512 workgroups).
pub(crate) fn reduce_items(cpu_kernels: bool) -> u32 {
    if cpu_kernels {
        16
    } else {
        4
    }
}

/// The runs of threads over a tile's accesses (the kernels' `QW`): the workgroup on a GPU
/// (each access coalesced over the workgroup), the SIMD width with the CPU kernels (a run reads
/// whole cache lines in a row).
pub(crate) fn simd_runs(ctx: &LossContext) -> u32 {
    if ctx.cpu_kernels {
        ctx.subgroup_size().unwrap_or(8)
    } else {
        WG
    }
}

pub(crate) const REDUCE: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/reduce.wgsl"));

/// One buffer range bound to a binding.
#[derive(Clone)]
pub(crate) struct Bind {
    pub binding: u32,
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Bind {
    /// The whole tensor.
    pub fn tensor(binding: u32, t: &Tensor) -> Bind {
        Bind {
            binding,
            buffer: t.buffer().clone(),
            offset: t.offset(),
            size: t.padded_len().max(4),
        }
    }
    /// Elements `[first, first + count)` of a tensor (2 or 4 bytes each; the size is rounded
    /// up to 4 bytes, which the buffer always has).
    pub fn window(binding: u32, t: &Tensor, first: u64, count: u64) -> Bind {
        let e = t.dtype().size();
        Bind {
            binding,
            buffer: t.buffer().clone(),
            offset: t.offset() + first * e,
            size: (count * e).div_ceil(4).max(1) * 4,
        }
    }
    /// A whole scratch buffer.
    pub fn scratch(binding: u32, b: &PoolBuf) -> Bind {
        Bind {
            binding,
            buffer: b.buffer.clone(),
            offset: 0,
            size: b.buffer.size(),
        }
    }
}

/// One dispatch: a pipeline, its uniform parameters (binding 0), its storage bindings and grid.
pub(crate) struct Step {
    pub pipeline: wgpu::ComputePipeline,
    /// `shader:CONST=v..::entry`: what a step profile calls it.
    pub label: String,
    pub params: Vec<u8>,
    pub binds: Vec<Bind>,
    pub groups: [u32; 3],
}

/// Scratch buffers that must live until the recorded work has run.
#[derive(Default)]
pub struct Scratch {
    pub(crate) bufs: Vec<PoolBuf>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("buffers", &self.bufs.len())
            .field(
                "bytes",
                &self.bufs.iter().map(|b| b.buffer.size()).sum::<u64>(),
            )
            .finish()
    }
}

impl Scratch {
    pub(crate) fn keep(&mut self, b: PoolBuf) -> &PoolBuf {
        self.bufs.push(b);
        self.bufs.last().expect("just pushed")
    }
}

/// A list of compute steps recorded into one encoder, in order.
#[derive(Default)]
pub(crate) struct Program {
    pub steps: Vec<Step>,
}

/// A contiguous range of units (elements, rows, samples) processed by one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first unit of the range.
    pub first: u64,
    /// The number of units in the range.
    pub count: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl LossContext {
    /// The 2-D grid of `groups` workgroups: up to 65535 (the limit) in x, the rest wrapped in y.
    pub(crate) fn grid(&self, groups: u64) -> Result<[u32; 3]> {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1) as u64;
        let groups = groups.max(1);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::TooLarge(format!(
                "{groups} workgroups do not fit a {max} x {max} grid"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Splits `units` units of `unit_bytes` bytes each into windows that fit one storage
    /// binding. Every window but the last holds a multiple of `multiple` units, and starts at a
    /// byte offset aligned for storage bindings.
    pub(crate) fn windows(
        &self,
        units: u64,
        unit_bytes: u64,
        multiple: u64,
    ) -> Result<Vec<Window>> {
        let align = self.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let unit_bytes = unit_bytes.max(1);
        let align_units = align / gcd(unit_bytes, align);
        let step = multiple.max(1) * align_units / gcd(multiple.max(1), align_units);
        let max_units = self.max_window_bytes / unit_bytes;
        let per = max_units / step * step;
        if per == 0 {
            return Err(Error::TooLarge(format!(
                "one unit of {} bytes (x{step} for alignment) is over the {}-byte storage binding limit",
                unit_bytes, self.max_window_bytes
            )));
        }
        let mut out = Vec::new();
        let mut first = 0;
        while first < units {
            let count = per.min(units - first);
            out.push(Window { first, count });
            first += count;
        }
        if out.is_empty() {
            out.push(Window { first: 0, count: 0 });
        }
        Ok(out)
    }

    /// A step of pipeline `entry` of `src` with `params` and `binds` over `groups` workgroups.
    pub(crate) fn step<P: bytemuck::Pod>(
        &self,
        src: &ShaderSource,
        entry: &str,
        params: &P,
        binds: Vec<Bind>,
        groups: u64,
    ) -> Result<Step> {
        let src = if src.standalone {
            src.clone()
        } else {
            src.clone().with_subgroup(self.subgroup_size)
        };
        let key = src.key();
        let pipeline = self.pipeline_of(&key, || src.compose(), entry, src.trusted)?;
        Ok(Step {
            pipeline,
            label: format!("{key}::{entry}"),
            params: bytemuck::bytes_of(params).to_vec(),
            binds,
            groups: self.grid(groups)?,
        })
    }

    /// Records the deterministic tree reduction of `rows` rows of `cols` partials held in
    /// `partials` (row-major) into a new buffer of `rows` totals.
    pub(crate) fn reduce_rows(
        &self,
        prog: &mut Program,
        scratch: &mut Scratch,
        partials: &PoolBuf,
        rows: u64,
        cols: u64,
    ) -> Result<PoolBuf> {
        self.reduce_rows_of(prog, scratch, &partials.buffer, rows, cols)
    }

    /// [`Self::reduce_rows`] of a buffer handle (a recorder's scratch).
    pub(crate) fn reduce_rows_of(
        &self,
        prog: &mut Program,
        scratch: &mut Scratch,
        partials: &wgpu::Buffer,
        rows: u64,
        cols: u64,
    ) -> Result<PoolBuf> {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct P {
            cols: u32,
            out_cols: u32,
            rows: u32,
            pad: u32,
        }
        let per_thread = reduce_items(self.cpu_kernels);
        let src = ShaderSource::new("reduce", REDUCE)
            .with("RI", per_thread)
            .with_subgroup(self.subgroup_size);
        let chunk = per_thread as u64 * WG as u64;
        let mut cols = cols.max(1);
        let mut cur: Option<PoolBuf> = None;
        loop {
            let out_cols = cols.div_ceil(chunk);
            let dst = self.alloc(rows * out_cols * 4, LossContext::storage_usage())?;
            let input = match &cur {
                Some(b) => Bind::scratch(1, b),
                None => Bind {
                    binding: 1,
                    buffer: partials.clone(),
                    offset: 0,
                    size: partials.size(),
                },
            };
            let pipeline = self.pipeline(&src.key(), || src.compose(), "reduce")?;
            if out_cols > self.limits.max_compute_workgroups_per_dimension as u64
                || rows > self.limits.max_compute_workgroups_per_dimension as u64
            {
                return Err(Error::TooLarge(format!(
                    "a reduction of {rows} x {cols} partials is too wide"
                )));
            }
            let p = P {
                cols: cols as u32,
                out_cols: out_cols as u32,
                rows: rows as u32,
                pad: 0,
            };
            prog.steps.push(Step {
                pipeline,
                label: "reduce::reduce_rows".into(),
                params: bytemuck::bytes_of(&p).to_vec(),
                binds: vec![input, Bind::scratch(2, &dst)],
                groups: [out_cols as u32, rows as u32, 1],
            });
            if let Some(b) = cur.take() {
                scratch.keep(b);
            }
            cur = Some(dst);
            cols = out_cols;
            if cols == 1 {
                break;
            }
        }
        Ok(cur.expect("at least one pass"))
    }

    /// Records `prog` into `encoder`: one uniform buffer for every step's parameters, one
    /// compute pass. The uniform buffer joins `scratch`.
    pub(crate) fn encode(
        &self,
        prog: Program,
        encoder: &mut wgpu::CommandEncoder,
        scratch: &mut Scratch,
    ) -> Result<()> {
        if prog.steps.is_empty() {
            return Ok(());
        }
        let align = self.limits.min_uniform_buffer_offset_alignment.max(16) as u64;
        let slot = |p: &Step| (p.params.len() as u64).max(16).div_ceil(align) * align;
        let total: u64 = prog.steps.iter().map(slot).sum();
        let uniforms = self.alloc(
            total,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut bytes = vec![0u8; total as usize];
        let mut offsets = Vec::with_capacity(prog.steps.len());
        let mut at = 0u64;
        for s in &prog.steps {
            bytes[at as usize..at as usize + s.params.len()].copy_from_slice(&s.params);
            offsets.push(at);
            at += slot(s);
        }
        self.scoped(|| {
            self.queue.write_buffer(&uniforms.buffer, 0, &bytes);
            let groups: Vec<wgpu::BindGroup> = prog
                .steps
                .iter()
                .zip(&offsets)
                .map(|(s, &off)| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms.buffer,
                            offset: off,
                            size: std::num::NonZeroU64::new(s.params.len().max(16) as u64),
                        }),
                    }];
                    for b in &s.binds {
                        entries.push(wgpu::BindGroupEntry {
                            binding: b.binding,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.buffer,
                                offset: b.offset,
                                size: std::num::NonZeroU64::new(b.size),
                            }),
                        });
                    }
                    self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &s.pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
                })
                .collect();
            // With a step profile running (the benchmark's --steps), a pass per step between
            // two timestamps; otherwise one pass for the whole program.
            let mut profile = self.profile.lock();
            if let Some(p) = profile.as_mut() {
                for (s, g) in prog.steps.iter().zip(&groups) {
                    let i = p.labels.len() as u32;
                    let writes =
                        (2 * i + 2 <= p.capacity).then(|| wgpu::ComputePassTimestampWrites {
                            query_set: &p.queries,
                            beginning_of_pass_write_index: Some(2 * i),
                            end_of_pass_write_index: Some(2 * i + 1),
                        });
                    if writes.is_some() {
                        p.labels.push(s.label.clone());
                    }
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&s.label),
                        timestamp_writes: writes,
                    });
                    pass.set_pipeline(&s.pipeline);
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(s.groups[0], s.groups[1], s.groups[2]);
                }
                return Ok(());
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("deepml"),
                timestamp_writes: None,
            });
            for (s, g) in prog.steps.iter().zip(&groups) {
                pass.set_pipeline(&s.pipeline);
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(s.groups[0], s.groups[1], s.groups[2]);
            }
            Ok(())
        })?;
        scratch.keep(uniforms);
        Ok(())
    }

    /// Records `prog` and submits it on the context's queue.
    pub(crate) fn submit(&self, prog: Program, scratch: &mut Scratch) -> Result<()> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("deepml"),
            });
        self.encode(prog, &mut encoder, scratch)?;
        self.scoped(|| {
            self.queue.submit(Some(encoder.finish()));
            Ok(())
        })
    }
}

#[cfg(test)]
mod unroll_tests {
    use super::unroll;

    #[test]
    fn marked_loops_become_blocks_with_constant_indices() {
        let body = "var a: array<f32, N>;\n\
                    for (var c = 1u; c < N; c = c + 1u) { // #unroll\n\
                    for (var k = 0u; k < 2u; k = k + 1u) { // #unroll\n\
                    a[c] = a[c] + f32(k); // {}\n\
                    }\n\
                    }\n\
                    for (var j = 0u; j < P.n; j = j + 1u) { // #unroll\n\
                    s = s + 1.0;\n\
                    }\n";
        let out = unroll(body, &[("N", 3)]);
        // c in 1, 2; k in 0, 1 inside each: four copies of the statement.
        assert_eq!(out.matches("a[c] = a[c] + f32(k);").count(), 4);
        assert_eq!(out.matches("const c: u32 = 1u;").count(), 1);
        assert_eq!(out.matches("const c: u32 = 2u;").count(), 1);
        assert_eq!(out.matches("const k: u32 = 1u;").count(), 2);
        assert!(!out.contains("for (var c"));
        // A bound that is not a constant keeps its loop.
        assert!(out.contains("for (var j = 0u; j < P.n; j = j + 1u) {"));
        // Balanced braces.
        assert_eq!(out.matches('{').count(), out.matches('}').count());
        // No iterations: nothing of the body.
        let none = unroll(body, &[("N", 0)]);
        assert!(!none.contains("a[c]"));
        assert!(none.contains("s = s + 1.0;"));
    }
}
