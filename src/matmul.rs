//! The register-tiled matrix product shared by the angular loss's three products
//! (`x W^T`, `G W` and `G^T x`): `C[m, n] (+)= rs[m] cs[n] sum_k A(m, k) B(k, n) ks[k]`.
//!
//! The WGSL is generated from Rust, one variant per tile shape, operand layout and scale set,
//! fully unrolled: a workgroup of `LANES` invocations owns `R` rows and `LANES` columns of C,
//! one column per invocation, `R` accumulators in registers. The K loop runs in slices of `KS`:
//! each invocation loads its `KS` values of B (the only loads whose address depends on the
//! invocation) into registers, then every row's `KS` values of A are read at addresses that
//! depend only on the workgroup and loop counters, so that an adapter running a workgroup as
//! SIMD loops over its invocations (llvmpipe, SwiftShader) makes them one broadcast load each.
//! B's loads are thereby amortised over `R` multiply-adds each, A's over the `LANES` columns.
//!
//! The modules are created trusted (no bounds checks, no loop counters): every index is in
//! range by construction. Rows: the host guarantees `M >= R` and the last row tile starts at
//! `M - R` (overlapping its neighbour, writing only the rows it owns); columns: the
//! invocation's column is clamped to `N - 1` for reading and not written past `N`; K: whole
//! slices, then a remainder loop. The host checks that every binding holds the extent the
//! product reads or writes before recording it ([`MatmulSpec::check`]).
//!
//! Each output is one invocation's sum over K in order: bit-identical from run to run. A
//! reduction longer than [`K_MAX`] runs as several dispatches that add into C in order
//! (llvmpipe ends an invocation's loops after 65535 iterations in total).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, ShaderSource, Step};

/// Columns of a tile: the workgroup size, one column per invocation.
pub const LANES: u32 = 64;
/// Depth of a K slice held in registers.
pub const KS: u32 = 8;
/// Rows whose accumulations the loop-free variant interleaves.
const GROUP: u32 = 8;
/// ... and its four-column form (two rows of vec4: eight chains).
const WIDE_GROUP: u32 = 2;
/// Rows per workgroup of the four-column form. Each invocation loads its `4 x kb` values of B
/// once per block and uses them for every row: on lavapipe those lane-varying loads (gathers
/// of scalar loads) weigh about as much as the multiply-adds at 16 rows. 64 rows run the
/// angular loss's products 1.25x faster than 16 (32: 1.1x; 128: slower than 16, and its
/// shaders take minutes to compile).
pub const WIDE_ROWS: u32 = 64;
/// The longest reduction of one dispatch.
pub const K_MAX: u64 = 65536;

/// The operand layouts and options of one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Rows per workgroup (1, 8, 32, or `WIDE_ROWS` in the four-column form).
    pub rows: u32,
    /// A(m, k) = a[off + m * stride + k] (k contiguous), else a[off + k * stride + m].
    pub a_kc: bool,
    /// With `a_kc`: A is read as vec4 (K, the offset and the stride are multiples of 4, and K
    /// of `KS`).
    pub a_v4: bool,
    /// B(k, n) = b[off + n * stride + k] (k contiguous), else b[off + k * stride + n].
    pub b_kc: bool,
    /// With `b_kc` on the loop-free variant: B is read as vec4 (its offset and stride are
    /// multiples of 4).
    pub b_v4: bool,
    /// A row scale rs[m] on the result.
    pub rs: bool,
    /// A column scale cs[n] on the result.
    pub cs: bool,
    /// A reduction scale ks[k] inside the sum.
    pub ks: bool,
    /// Add to C instead of overwriting it.
    pub add: bool,
    /// 0: the K loop. Else the loop-free variant for CPU adapters: one dispatch per block of
    /// `kb` reductions, unrolled (see [`record`]).
    pub kb: u32,
    /// With `kb`: four columns per invocation (vec4 loads of B, vec4 accumulators and stores;
    /// N, B's and C's offsets and strides multiples of 4).
    pub wide: bool,
    /// With `kb`: the last, shorter block (`P.k < kb`; indices clamped, values zeroed).
    pub tail: bool,
}

impl Variant {
    fn key(&self) -> String {
        format!(
            "matmul:r{}:a{}{}:b{}{}:s{}{}{}:add{}:kb{}{}{}",
            self.rows,
            if self.a_kc { "k" } else { "m" },
            if self.a_v4 { "4" } else { "" },
            if self.b_kc { "k" } else { "n" },
            if self.b_v4 { "4" } else { "" },
            self.rs as u8,
            self.cs as u8,
            self.ks as u8,
            self.add as u8,
            self.kb,
            if self.tail { "t" } else { "" },
            if self.wide { "w" } else { "" }
        )
    }
}

/// The WGSL of a variant.
pub fn generate(v: &Variant) -> String {
    if v.wide {
        return generate_wide(v);
    }
    let r = v.rows;
    let mut s = String::new();
    s.push_str(
        "struct MP {
    m: u32, n: u32, k: u32, tiles_m: u32,
    a_off: u32, a_s: u32, b_off: u32, b_s: u32,
    c_off: u32, c_s: u32, rs_off: u32, cs_off: u32,
    ks_off: u32, p0: u32, p1: u32, p2: u32,
}
@group(0) @binding(0) var<uniform> P: MP;
",
    );
    if v.a_v4 {
        s.push_str("@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;\n");
    } else {
        s.push_str("@group(0) @binding(1) var<storage, read> a: array<f32>;\n");
    }
    if v.b_v4 {
        s.push_str("@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;\n");
    } else {
        s.push_str("@group(0) @binding(2) var<storage, read> b: array<f32>;\n");
    }
    s.push_str("@group(0) @binding(3) var<storage, read_write> c: array<f32>;\n");
    if v.rs {
        s.push_str("@group(0) @binding(4) var<storage, read> rs: array<f32>;\n");
    }
    if v.cs {
        s.push_str("@group(0) @binding(5) var<storage, read> cs: array<f32>;\n");
    }
    if v.ks {
        s.push_str("@group(0) @binding(6) var<storage, read> ks: array<f32>;\n");
    }
    if v.kb > 0 && v.a_v4 {
        s.push_str(&format!(
            "var<workgroup> As: array<vec4<f32>, {}>;\n",
            v.rows * v.kb / 4
        ));
    } else if v.kb > 0 {
        s.push_str(&format!(
            "var<workgroup> As: array<f32, {}>;\n",
            v.rows * v.kb
        ));
    }
    s.push_str(&format!(
        "
@compute @workgroup_size({LANES})
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = wid.x + wid.y * nwg.x;
    let tm = g % P.tiles_m;
    let tn = g / P.tiles_m;
    // The last row tile overlaps its neighbour (M >= R): rows below `own` belong to it.
    let own = tm * {r}u;
    let m0 = min(own, P.m - {r}u);
    let nn = tn * {LANES}u + lid;
    let n = min(nn, P.n - 1u);
"
    ));
    for i in 0..r {
        s.push_str(&format!("    var c{i} = 0.0;\n"));
    }
    if v.b_v4 {
        s.push_str("    let bn = (P.b_off + n * P.b_s) / 4u;\n");
    } else if v.b_kc {
        s.push_str("    let bn = P.b_off + n * P.b_s;\n");
    }
    if v.kb > 0 {
        cpu_body(v, &mut s);
    } else {
        gpu_body(v, &mut s);
    }
    epilogue(v, &mut s);
    s
}

/// The staging of A's tile in workgroup memory (loop-free variants without a tail), and the
/// expression of A(i, t) read back from it.
fn stage(v: &Variant, s: &mut String) {
    let (r, kb) = (v.rows, v.kb);
    if v.a_v4 {
        let kq = kb / 4;
        for q in 0..(r * kq).div_ceil(LANES) {
            s.push_str(&format!(
                "    {{\n        let e = min({q}u * {LANES}u + lid, {}u);\n        As[e] = a[P.a_off + (m0 + e / {kq}u) * P.a_s + e % {kq}u];\n    }}\n",
                r * kq - 1
            ));
        }
    } else {
        for q in 0..(r * kb).div_ceil(LANES) {
            let aidx = if v.a_kc {
                "P.a_off + (m0 + i) * P.a_s + t"
            } else {
                "P.a_off + t * P.a_s + m0 + i"
            };
            s.push_str(&format!(
                "    {{\n        let e = min({q}u * {LANES}u + lid, {}u);\n        let i = e / {kb}u;\n        let t = e % {kb}u;\n        As[e] = a[{aidx}];\n    }}\n",
                r * kb - 1
            ));
        }
    }
    s.push_str("    workgroupBarrier();\n");
}

fn a_staged(v: &Variant, i: u32, t: u32) -> String {
    let e = i * v.kb + t;
    if v.a_v4 {
        format!("As[{}u].{}", e / 4, ["x", "y", "z", "w"][(e % 4) as usize])
    } else {
        format!("As[{e}u]")
    }
}

/// The loop-free variant with four columns per invocation: a quarter of the loads of B and
/// stores of C per multiply-add (each a loop over the lanes on llvmpipe).
fn generate_wide(v: &Variant) -> String {
    let (r, kb) = (v.rows, v.kb);
    let mut s = String::from(
        "struct MP {
    m: u32, n: u32, k: u32, tiles_m: u32,
    a_off: u32, a_s: u32, b_off: u32, b_s: u32,
    c_off: u32, c_s: u32, rs_off: u32, cs_off: u32,
    ks_off: u32, p0: u32, p1: u32, p2: u32,
}
@group(0) @binding(0) var<uniform> P: MP;
",
    );
    let a_ty = if v.a_v4 { "vec4<f32>" } else { "f32" };
    s.push_str(&format!(
        "@group(0) @binding(1) var<storage, read> a: array<{a_ty}>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
"
    ));
    if v.rs {
        s.push_str("@group(0) @binding(4) var<storage, read> rs: array<f32>;\n");
    }
    if v.cs {
        s.push_str("@group(0) @binding(5) var<storage, read> cs: array<f32>;\n");
    }
    if v.ks {
        s.push_str("@group(0) @binding(6) var<storage, read> ks: array<f32>;\n");
    }
    let slots = if v.a_v4 { r * kb / 4 } else { r * kb };
    s.push_str(&format!(
        "var<workgroup> As: array<{a_ty}, {slots}>;

@compute @workgroup_size({LANES})
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {{
    let g = wid.x + wid.y * nwg.x;
    let tm = g % P.tiles_m;
    let tn = g / P.tiles_m;
    let own = tm * {r}u;
    let m0 = min(own, P.m - {r}u);
    // This invocation's four columns: 4 nq .. 4 nq + 3.
    let nn = tn * {LANES}u + lid;
    let nq = min(nn, P.n / 4u - 1u);
"
    ));
    for i in 0..r {
        s.push_str(&format!("    var c{i} = vec4<f32>(0.0);\n"));
    }
    let kscale = |t: u32| {
        if v.ks {
            format!(" * ks[P.ks_off + {t}u]")
        } else {
            String::new()
        }
    };
    if v.b_kc {
        // Four rows of B's storage (one per column), read along K four at a time.
        for e in 0..4 {
            s.push_str(&format!(
                "    let br{e} = (P.b_off + (4u * nq + {e}u) * P.b_s) / 4u;\n"
            ));
        }
        for q in 0..kb / 4 {
            for e in 0..4 {
                s.push_str(&format!("    let w{e}_{q} = b[br{e} + {q}u];\n"));
            }
            for (cc, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                let t = q * 4 + cc as u32;
                s.push_str(&format!(
                    "    let b{t} = vec4<f32>(w0_{q}.{comp}, w1_{q}.{comp}, w2_{q}.{comp}, w3_{q}.{comp}){};\n",
                    kscale(t)
                ));
            }
        }
    } else {
        s.push_str("    let bb = P.b_off / 4u + nq;\n    let bs = P.b_s / 4u;\n");
        for t in 0..kb {
            s.push_str(&format!("    let b{t} = b[bb + {t}u * bs]{};\n", kscale(t)));
        }
    }
    stage(v, &mut s);
    for g0 in (0..r).step_by(WIDE_GROUP as usize) {
        for t in 0..kb {
            for i in g0..(g0 + WIDE_GROUP).min(r) {
                s.push_str(&format!(
                    "    c{i} = fma(vec4<f32>({}), b{t}, c{i});\n",
                    a_staged(v, i, t)
                ));
            }
        }
    }
    s.push_str("    if (nn >= P.n / 4u) {\n        return;\n    }\n");
    if v.cs {
        s.push_str(
            "    let q0 = P.cs_off + 4u * nq;\n    let sc = vec4<f32>(cs[q0], cs[q0 + 1u], cs[q0 + 2u], cs[q0 + 3u]);\n",
        );
    }
    for i in 0..r {
        let mut val = format!("c{i}");
        if v.rs {
            val = format!("{val} * rs[P.rs_off + m0 + {i}u]");
        }
        if v.cs {
            val = format!("{val} * sc");
        }
        let store = if v.add {
            format!("c[o{i}] = c[o{i}] + {val};")
        } else {
            format!("c[o{i}] = {val};")
        };
        s.push_str(&format!(
            "    if (m0 + {i}u >= own) {{\n        let o{i} = (P.c_off + (m0 + {i}u) * P.c_s) / 4u + nq;\n        {store}\n    }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// The B value at reduction index `kx` (an expression), scaled by ks.
fn bload(v: &Variant, kx: &str) -> String {
    let base = if v.b_kc {
        format!("b[bn + {kx}]")
    } else {
        format!("b[P.b_off + ({kx}) * P.b_s + n]")
    };
    if v.ks {
        format!("{base} * ks[P.ks_off + {kx}]")
    } else {
        base
    }
}

/// The loop-free block: no control flow before the last load, so that llvmpipe loads the
/// values of A (whose addresses do not depend on the invocation) once for its 8 lanes.
fn cpu_body(v: &Variant, s: &mut String) {
    let r = v.rows;
    let kb = v.kb;
    let kx = |t: u32| {
        if v.tail {
            format!("min({t}u, P.k - 1u)")
        } else {
            format!("{t}u")
        }
    };
    if v.b_v4 {
        for q in 0..kb / 4 {
            s.push_str(&format!("    let bq{q} = b[bn + {q}u];\n"));
            for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                let t = q * 4 + e as u32;
                if v.ks {
                    s.push_str(&format!(
                        "    let b{t} = bq{q}.{comp} * ks[P.ks_off + {t}u];\n"
                    ));
                } else {
                    s.push_str(&format!("    let b{t} = bq{q}.{comp};\n"));
                }
            }
        }
    }
    for t in 0..kb {
        if v.b_v4 {
            break;
        }
        let b = bload(v, &kx(t));
        if v.tail {
            s.push_str(&format!("    let b{t} = select(0.0, {b}, {t}u < P.k);\n"));
        } else {
            s.push_str(&format!("    let b{t} = {b};\n"));
        }
    }
    // A's tile, staged in workgroup memory by every invocation (row-major, KB per row), then
    // read at addresses that depend on nothing but constants.
    if v.a_v4 {
        let kq = kb / 4;
        let per = (r * kq).div_ceil(LANES);
        for q in 0..per {
            s.push_str(&format!(
                "    {{\n        let e = min({q}u * {LANES}u + lid, {}u);\n        As[e] = a[P.a_off + (m0 + e / {kq}u) * P.a_s + e % {kq}u];\n    }}\n",
                r * kq - 1
            ));
        }
        s.push_str("    workgroupBarrier();\n");
        let comps = ["x", "y", "z", "w"];
        // Groups of GROUP rows, interleaved along K: GROUP independent accumulation chains
        // in flight (one row's chain alone would wait on the latency of every fma).
        for g0 in (0..r).step_by(GROUP as usize) {
            for t in 0..kb {
                for i in g0..(g0 + GROUP).min(r) {
                    let e = i * kb + t;
                    s.push_str(&format!(
                        "    c{i} = fma(As[{}u].{}, b{t}, c{i});\n",
                        e / 4,
                        comps[(e % 4) as usize]
                    ));
                }
            }
        }
        return;
    }
    let per = (r * kb).div_ceil(LANES);
    for q in 0..per {
        s.push_str(&format!(
            "    {{\n        let e = min({q}u * {LANES}u + lid, {}u);\n        let i = e / {kb}u;\n        let t = e % {kb}u;\n",
            r * kb - 1
        ));
        let tk = if v.tail { "min(t, P.k - 1u)" } else { "t" };
        let aidx = if v.a_kc {
            format!("P.a_off + (m0 + i) * P.a_s + {tk}")
        } else {
            format!("P.a_off + ({tk}) * P.a_s + m0 + i")
        };
        if v.tail {
            s.push_str(&format!(
                "        As[e] = select(0.0, a[{aidx}], t < P.k);\n    }}\n"
            ));
        } else {
            s.push_str(&format!("        As[e] = a[{aidx}];\n    }}\n"));
        }
    }
    s.push_str("    workgroupBarrier();\n");
    for g0 in (0..r).step_by(GROUP as usize) {
        for t in 0..kb {
            for i in g0..(g0 + GROUP).min(r) {
                s.push_str(&format!(
                    "    c{i} = fma(As[{}u], b{t}, c{i});\n",
                    i * kb + t
                ));
            }
        }
    }
}

fn gpu_body(v: &Variant, s: &mut String) {
    let r = v.rows;
    let bload = |kx: &str| bload(v, kx);
    s.push_str(&format!(
        "    let kfull = P.k - P.k % {KS}u;
    for (var k0 = 0u; k0 < kfull; k0 = k0 + {KS}u) {{
"
    ));
    for t in 0..KS {
        s.push_str(&format!(
            "        let b{t} = {};\n",
            bload(&format!("k0 + {t}u"))
        ));
    }
    for i in 0..r {
        if v.a_v4 {
            s.push_str(&format!(
                "        let ra{i} = P.a_off + (m0 + {i}u) * P.a_s + k0 / 4u;\n"
            ));
            for q in 0..KS / 4 {
                s.push_str(&format!("        let a{i}_{q} = a[ra{i} + {q}u];\n"));
                for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    let t = q * 4 + e as u32;
                    s.push_str(&format!(
                        "        c{i} = fma(a{i}_{q}.{comp}, b{t}, c{i});\n"
                    ));
                }
            }
        } else if v.a_kc {
            s.push_str(&format!(
                "        let ra{i} = P.a_off + (m0 + {i}u) * P.a_s + k0;\n"
            ));
            for t in 0..KS {
                s.push_str(&format!(
                    "        c{i} = fma(a[ra{i} + {t}u], b{t}, c{i});\n"
                ));
            }
        } else {
            for t in 0..KS {
                s.push_str(&format!(
                    "        c{i} = fma(a[P.a_off + (k0 + {t}u) * P.a_s + m0 + {i}u], b{t}, c{i});\n"
                ));
            }
        }
    }
    s.push_str("    }\n");
    // The remainder (never in the vec4 variant: K is a multiple of KS there).
    if !v.a_v4 {
        s.push_str(&format!(
            "    for (var k = kfull; k < P.k; k = k + 1u) {{\n        let bk = {};\n",
            bload("k")
        ));
        for i in 0..r {
            let aidx = if v.a_kc {
                format!("P.a_off + (m0 + {i}u) * P.a_s + k")
            } else {
                format!("P.a_off + k * P.a_s + m0 + {i}u")
            };
            s.push_str(&format!("        c{i} = fma(a[{aidx}], bk, c{i});\n"));
        }
        s.push_str("    }\n");
    }
}

fn epilogue(v: &Variant, s: &mut String) {
    let r = v.rows;
    s.push_str("    if (nn >= P.n) {\n        return;\n    }\n");
    if v.cs {
        s.push_str("    let sc = cs[P.cs_off + n];\n");
    }
    for i in 0..r {
        let mut val = format!("c{i}");
        if v.rs {
            val = format!("{val} * rs[P.rs_off + m0 + {i}u]");
        }
        if v.cs {
            val = format!("{val} * sc");
        }
        let store = if v.add {
            format!("c[o{i}] = c[o{i}] + {val};")
        } else {
            format!("c[o{i}] = {val};")
        };
        s.push_str(&format!(
            "    if (m0 + {i}u >= own) {{\n        let o{i} = P.c_off + (m0 + {i}u) * P.c_s + n;\n        {store}\n    }}\n"
        ));
    }
    s.push_str("}\n");
}

/// The name (its pipeline key) and text of a variant, generated once per process.
fn leaked(v: &Variant) -> (&'static str, &'static str) {
    type Cache = HashMap<Variant, (&'static str, &'static str)>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = cache.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(*v).or_insert_with(|| {
        (
            Box::leak(v.key().into_boxed_str()),
            Box::leak(generate(v).into_boxed_str()),
        )
    })
}

/// The shader source of a variant: standalone (it needs none of the shared pieces) and
/// trusted (see the module documentation).
pub fn source(v: &Variant) -> ShaderSource {
    let (name, body) = leaked(v);
    let mut s = ShaderSource::new(name, body);
    s.standalone = true;
    s.trusted = true;
    s
}

/// Every variant the library records, for the portability tests.
pub fn shader_variants() -> Vec<ShaderSource> {
    let mut out = Vec::new();
    for rows in [1, 8, 32] {
        for (a_kc, a_v4) in [(true, false), (true, true), (false, false)] {
            for b_kc in [false, true] {
                for add in [false, true] {
                    // The scale sets the angular loss uses: (rs, cs, ks).
                    for (rs, cs, ks) in [
                        (false, false, false),
                        (true, true, false),
                        (true, false, true),
                        (false, false, true),
                    ] {
                        for (kb, tail) in [(0, false), (CPU_KB, false), (CPU_KB, true)] {
                            if a_v4 && tail {
                                continue;
                            }
                            out.push(source(&Variant {
                                rows,
                                a_kc,
                                a_v4,
                                b_kc,
                                b_v4: b_kc && kb > 0 && !tail,
                                rs,
                                cs,
                                ks,
                                add,
                                kb,
                                tail,
                                wide: false,
                            }));
                            if kb > 0 && !tail {
                                out.push(source(&Variant {
                                    rows: if rows == 32 { WIDE_ROWS } else { rows },
                                    a_kc,
                                    a_v4,
                                    b_kc,
                                    b_v4: false,
                                    rs,
                                    cs,
                                    ks,
                                    add,
                                    kb,
                                    tail,
                                    wide: true,
                                }));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// One operand: a binding, the element offset of its first element within it, and the stride
/// of its non-contiguous dimension.
#[derive(Clone)]
pub(crate) struct Operand {
    pub bind: Bind,
    pub off: u64,
    pub stride: u64,
}

/// One product `C (+)= diag(rs) (A diag(ks) B) diag(cs)` of `m x k` by `k x n`.
#[derive(Clone)]
pub(crate) struct MatmulSpec {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub a: Operand,
    pub a_kc: bool,
    pub b: Operand,
    pub b_kc: bool,
    /// C(m, n) = c[off + m * stride + n].
    pub c: Operand,
    pub rs: Option<Operand>,
    pub cs: Option<Operand>,
    pub ks: Option<Operand>,
    pub add: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MP {
    m: u32,
    n: u32,
    k: u32,
    tiles_m: u32,
    a_off: u32,
    a_s: u32,
    b_off: u32,
    b_s: u32,
    c_off: u32,
    c_s: u32,
    rs_off: u32,
    cs_off: u32,
    ks_off: u32,
    p0: u32,
    p1: u32,
    p2: u32,
}

fn need(what: &str, bind: &Bind, last_elem: u64) -> Result<()> {
    if (last_elem + 1) * 4 > bind.size {
        return Err(Error::InvalidInput(format!(
            "matmul: operand {what} reads element {last_elem} of a {}-byte binding",
            bind.size
        )));
    }
    Ok(())
}

fn to_u32(v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge(format!("matmul: {v} does not fit 32 bits")))
}

impl MatmulSpec {
    /// Every element the product touches lies inside its binding.
    pub(crate) fn check(&self) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k > 0 {
            let a_last = if self.a_kc {
                self.a.off + (m - 1) * self.a.stride + k - 1
            } else {
                self.a.off + (k - 1) * self.a.stride + m - 1
            };
            need("A", &self.a.bind, a_last)?;
            let b_last = if self.b_kc {
                self.b.off + (n - 1) * self.b.stride + k - 1
            } else {
                self.b.off + (k - 1) * self.b.stride + n - 1
            };
            need("B", &self.b.bind, b_last)?;
            if let Some(o) = &self.ks {
                need("ks", &o.bind, o.off + k - 1)?;
            }
        }
        need(
            "C",
            &self.c.bind,
            self.c.off + (m - 1) * self.c.stride + n - 1,
        )?;
        if let Some(o) = &self.rs {
            need("rs", &o.bind, o.off + m - 1)?;
        }
        if let Some(o) = &self.cs {
            need("cs", &o.bind, o.off + n - 1)?;
        }
        Ok(())
    }
}

/// Rows per workgroup for `m` rows: the largest of `max`, 8, 1 not over `m`.
fn rows_for(m: u64, max: u32) -> u32 {
    if m >= max as u64 {
        max
    } else if m >= 8 {
        8
    } else {
        1
    }
}

/// The tile shape for an adapter: (rows, loop-free block or 0).
fn shape_for(ctx: &LossContext) -> (u32, u32) {
    let env = |n: &str| std::env::var(n).ok().and_then(|v| v.parse::<u32>().ok());
    // The loop-free variant is for lavapipe (Vulkan on llvmpipe). On GL (llvmpipe through EGL)
    // its thousands of unrolled statements take Mesa's GLSL compiler minutes, and SwiftShader
    // (Vulkan, or a browser's CPU WebGPU) compiles them slowly and runs the loop faster: its
    // matmul tests took 160 s loop-free against 69 s looped. Both take the loop.
    let a = ctx.adapter();
    let cpu = a.device_type == wgpu::DeviceType::Cpu
        && a.backend == wgpu::Backend::Vulkan
        && a.name.to_lowercase().contains("llvmpipe");
    let kb = env("DEEPML_MM_KB").unwrap_or(if cpu { CPU_KB } else { 0 });
    let rows = env("DEEPML_MM_R").unwrap_or(32);
    (rows, kb)
}

/// The block of the loop-free variant on CPU adapters.
pub const CPU_KB: u32 = 128;

/// Records `spec` into `prog` (several dispatches when K is longer than `K_MAX`, or, on a CPU
/// adapter, one per block of [`CPU_KB`]).
pub(crate) fn record(ctx: &LossContext, prog: &mut Program, spec: &MatmulSpec) -> Result<()> {
    spec.check()?;
    if spec.m == 0 || spec.n == 0 {
        return Ok(());
    }
    let (max_rows, kb) = shape_for(ctx);
    let piece = if kb > 0 { kb as u64 } else { K_MAX };
    let pieces = spec.k.div_ceil(piece).max(1);
    for q in 0..pieces {
        let k0 = q * piece;
        let kl = (spec.k - k0.min(spec.k)).min(piece);
        let a_adv = if spec.a_kc { k0 } else { k0 * spec.a.stride };
        let b_adv = if spec.b_kc { k0 } else { k0 * spec.b.stride };
        let a_off = spec.a.off + a_adv;
        let tail = kb > 0 && kl < kb as u64;
        let a_v4 = spec.a_kc
            && !tail
            && kl.is_multiple_of(KS as u64)
            && a_off.is_multiple_of(4)
            && spec.a.stride.is_multiple_of(4);
        let b_off = spec.b.off + b_adv;
        let m4 = |v: u64| v.is_multiple_of(4);
        let wide = kb > 0
            && !tail
            && std::env::var("DEEPML_MM_NARROW").is_err()
            && m4(spec.n)
            && m4(spec.c.off)
            && m4(spec.c.stride)
            && m4(b_off)
            && m4(spec.b.stride);
        let b_v4 = kb > 0
            && !wide
            && spec.b_kc
            && !tail
            && b_off.is_multiple_of(4)
            && spec.b.stride.is_multiple_of(4);
        let rows = rows_for(spec.m, if wide { WIDE_ROWS } else { max_rows });
        let tiles_m = spec.m.div_ceil(rows as u64);
        let cols = if wide { spec.n / 4 } else { spec.n };
        let tiles_n = cols.div_ceil(LANES as u64);
        let v = Variant {
            wide,
            rows,
            a_kc: spec.a_kc,
            a_v4,
            b_kc: spec.b_kc,
            b_v4,
            rs: spec.rs.is_some(),
            cs: spec.cs.is_some(),
            ks: spec.ks.is_some(),
            add: spec.add || q > 0,
            kb,
            tail,
        };
        let d = if a_v4 { 4 } else { 1 };
        let p = MP {
            m: to_u32(spec.m)?,
            n: to_u32(spec.n)?,
            k: to_u32(kl)?,
            tiles_m: to_u32(tiles_m)?,
            a_off: to_u32(a_off / d)?,
            a_s: to_u32(spec.a.stride / d)?,
            b_off: to_u32(b_off)?,
            b_s: to_u32(spec.b.stride)?,
            c_off: to_u32(spec.c.off)?,
            c_s: to_u32(spec.c.stride)?,
            rs_off: to_u32(spec.rs.as_ref().map_or(0, |o| o.off))?,
            cs_off: to_u32(spec.cs.as_ref().map_or(0, |o| o.off))?,
            ks_off: to_u32(spec.ks.as_ref().map_or(0, |o| o.off + k0))?,
            ..Default::default()
        };
        let mut binds = vec![
            Bind {
                binding: 1,
                ..spec.a.bind.clone()
            },
            Bind {
                binding: 2,
                ..spec.b.bind.clone()
            },
            Bind {
                binding: 3,
                ..spec.c.bind.clone()
            },
        ];
        for (b, o) in [(4, &spec.rs), (5, &spec.cs), (6, &spec.ks)] {
            if let Some(o) = o {
                binds.push(Bind {
                    binding: b,
                    ..o.bind.clone()
                });
            }
        }
        let src = source(&v);
        let step: Step = ctx.step(&src, "matmul", &p, binds, tiles_m * tiles_n)?;
        prog.steps.push(step);
    }
    Ok(())
}

/// `op(A) op(B)` for row-major `a` (`[M, K]`, or `[K, M]` with `a_t`) and `b` (`[K, N]`, or
/// `[N, K]` with `b_t`): a new `[M, N]` tensor. Windows of rows of A and C where they exceed
/// one storage binding (A, B and each window of C must otherwise fit one).
pub fn matmul(
    ctx: &LossContext,
    a: &crate::tensor::Tensor,
    b: &crate::tensor::Tensor,
    a_t: bool,
    b_t: bool,
) -> Result<crate::tensor::Tensor> {
    let mut prog = Program::default();
    let out = record_matmul(ctx, &mut prog, a, b, a_t, b_t)?;
    let mut scratch = crate::kernel::Scratch::default();
    ctx.submit(prog, &mut scratch)?;
    Ok(out)
}

/// Records [`matmul`] into `prog`; the output tensor.
pub(crate) fn record_matmul(
    ctx: &LossContext,
    prog: &mut Program,
    a: &crate::tensor::Tensor,
    b: &crate::tensor::Tensor,
    a_t: bool,
    b_t: bool,
) -> Result<crate::tensor::Tensor> {
    use crate::tensor::{DType, Tensor};
    for (what, t) in [("a", a), ("b", b)] {
        if t.dtype() != DType::F32 || t.shape().len() != 2 {
            return Err(Error::ShapeMismatch(format!(
                "matmul: {what} must be a 2-D f32 tensor, got {:?} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
    }
    let (sa, sb) = (a.shape(), b.shape());
    let (m, k) = if a_t { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let (kb, n) = if b_t { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
    if k != kb {
        return Err(Error::ShapeMismatch(format!(
            "matmul: inner dimensions {k} and {kb} differ"
        )));
    }
    let (m, n, k) = (m as u64, n as u64, k as u64);
    if k == 0 {
        // An empty reduction: zeros.
        return ctx.upload(&vec![0.0; (m * n) as usize], &[m as usize, n as usize]);
    }
    let out: Tensor = ctx.empty(&[m as usize, n as usize], DType::F32)?;
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let align = (ctx.limits.min_storage_buffer_offset_alignment.max(4) / 4) as u64;
    // Rows of C (and of A without a_t) per window.
    let row_bytes = n.max(if a_t { 1 } else { k }).max(1) * 4;
    for w in ctx.windows(m, row_bytes, align)? {
        let a_op = if a_t {
            Operand {
                bind: Bind::tensor(1, a),
                off: w.first,
                stride: m,
            }
        } else {
            Operand {
                bind: Bind::window(1, a, w.first * k, w.count * k),
                off: 0,
                stride: k,
            }
        };
        let spec = MatmulSpec {
            m: w.count,
            n,
            k,
            a: a_op,
            a_kc: !a_t,
            b: Operand {
                bind: Bind::tensor(2, b),
                off: 0,
                stride: if b_t { k } else { n },
            },
            b_kc: b_t,
            c: Operand {
                bind: Bind::window(3, &out, w.first * n, w.count * n),
                off: 0,
                stride: n,
            },
            rs: None,
            cs: None,
            ks: None,
            add: false,
        };
        record(ctx, prog, &spec)?;
    }
    Ok(out)
}
