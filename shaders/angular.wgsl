// AngularPenaltySMLoss (ArcFace, SphereFace, CosFace): value and the gradients with respect to
// x [N, F] and the raw class weight W [C, F] (F = in_features, C = out_features), without ever
// holding the N x C logits: the classes are processed in chunks of at most `chunk` classes
// (the host sizes it, src/losses/angular.rs), through one [rows, chunk] buffer L.
//
// Passes, in the order the host records them (R = rows of a row window):
//   wnorm   one workgroup per class row: winv_j = 1 / max(||W_j||, 1e-12), or 1 without
//           normalize_weight.
//   xnorm   one workgroup per sample row: xinv_i, and the row state (rstat, 8 floats a row:
//           valid, running max M and sum O, target logit c, lse, d loss / d wf_iy, r) reset.
//   pass 1, per row window and class chunk:
//     L = x W_chunk^T                    the shared matrix product (src/matmul.rs); the passes
//                                        below scale it: wf_ij = L_ij xinv_i winv_j
//     stats   one workgroup per row: the chunk's max and sum of exp(s wf) over the
//             non-target classes, merged into (M, O) in chunk order; the target logit c.
//   finish  one workgroup per row: label check (clamped, error flag), the margin, the loss,
//           lse and d loss / d wf at the target.
//   pass 2, per class chunk and row window (L recomputed unless one chunk and one window):
//     grad    one workgroup per row: G = d loss / d wf; r_i += sum_j G_ij wf_ij; L = G'' in
//             place, G''_ij = xinv_i G_ij winv_j (subnormals flushed to zero).
//     dx     += G'' W_chunk                     (matrix product; first chunk honours
//               GradOpts.accumulate)
//     P_chunk (+)= G''^T x                       (matrix product; over row windows in order;
//               P = dW^ diag(winv), the gradient of the raw W without normalize_weight)
//     wgrad / wgrad_inplace  (normalize_weight) dW = P - W^ (W^ . P) per class row
//   proj    dx_i -= r_i xinv_i^2 x_i (the projection through the normalisation of x).
//   finalize  loss = sum of the per-sample losses (tree reduction, reduce.wgsl) * 1/N or 1.
//   sgd     W -= lr * g, element-wise, in place.
//
// Out-of-range labels never index out of bounds: the label is clamped into [0, C), the
// sample's loss is NaN (so a mean or sum is NaN), its gradient row is zero, and bit 0 of
// flag[0] is set (atomicOr, the only atomic: an integer one). No float atomics; every sum has
// a fixed order, so results are bit-identical from run to run.

struct Params {
    rows: u32,      // rows of the row window (sgd: elements of the window)
    classes: u32,   // classes of the class chunk (wnorm, wgrad: of the class window)
    features: u32,  // F
    out: u32,       // C
    c0: u32,        // first class of the chunk
    ld: u32,        // row stride of L
    mode: u32,      // bit 0: add to the output instead of overwriting
    loss_type: u32, // 0 arcface, 1 sphereface, 2 cosface
    normw: u32,     // normalize_weight
    cbase: u32,     // the global index of this rank's first class (class-sharded; else 0)
    labels_out: u32, // the range of the labels: all classes of all ranks (else C)
    woff: u32,      // stats, grad: the chunk's first class within the winv binding
    s: f32,
    m: f32,
    cos_m: f32,
    sin_m: f32,
    lo: f32,        // -1 + eps (f32)
    hi: f32,        // 1 - eps (f32)
    gscale: f32,    // upstream scale * (1/N for mean, 1 otherwise)
    aux: f32,       // finalize: the loss scale; sgd: the learning rate
    sqb: f32,       // sqrt(eps (2 - eps)) = sin(acos(1 - eps)), computed in f64 on the host
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read_write> L: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstat: array<f32>;
@group(0) @binding(6) var<storage, read_write> winv: array<f32>;
@group(0) @binding(7) var<storage, read_write> gx: array<f32>;
@group(0) @binding(8) var<storage, read_write> gw: array<f32>;
@group(0) @binding(9) var<storage, read_write> sloss: array<f32>;
@group(0) @binding(10) var<storage, read_write> flag: array<atomic<u32>>;
@group(0) @binding(11) var<storage, read> totals: array<f32>;
@group(0) @binding(12) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(13) var<storage, read> dwh: array<f32>;
@group(0) @binding(14) var<storage, read> sgd_g: array<f32>;
@group(0) @binding(15) var<storage, read_write> wmut: array<f32>;
@group(0) @binding(16) var<storage, read_write> xinv: array<f32>;
// L as vec4 (its row stride is a multiple of 4; the padding past a chunk's classes is never
// read by the products).
@group(0) @binding(17) var<storage, read_write> L4: array<vec4<f32>>;

// rstat slots.
const RS_VALID: u32 = 0u;
const RS_M: u32 = 1u;
const RS_O: u32 = 2u;
const RS_C: u32 = 3u;
const RS_LSE: u32 = 4u;
const RS_DY: u32 = 5u;
const RS_R: u32 = 6u;
const RS: u32 = 8u;

const NORM_EPS: f32 = 1e-12;

// ---------------------------------------------------------------------------------------------
// Row norms.

@compute @workgroup_size(256)
fn wnorm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg);
    if (j >= P.classes) {
        return;
    }
    let base = j * P.features;
    var acc = 0.0;
    for (var k = lid; k < P.features; k = k + WG) {
        let v = w[base + k];
        acc = acc + v * v;
    }
    let n = sqrt(wg_sum(lid, acc));
    if (lid == 0u) {
        if (P.normw != 0u) {
            winv[j] = 1.0 / max(n, NORM_EPS);
        } else {
            winv[j] = 1.0;
        }
    }
}

@compute @workgroup_size(256)
fn xnorm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg);
    if (i >= P.rows) {
        return;
    }
    let base = i * P.features;
    var acc = 0.0;
    for (var k = lid; k < P.features; k = k + WG) {
        let v = x[base + k];
        acc = acc + v * v;
    }
    let n = sqrt(wg_sum(lid, acc));
    if (lid == 0u) {
        xinv[i] = 1.0 / max(n, NORM_EPS);
        let b = i * RS;
        rstat[b + RS_VALID] = select(0.0, 1.0, n >= NORM_EPS);
        rstat[b + RS_M] = -3.0e38;
        rstat[b + RS_O] = 0.0;
        rstat[b + RS_C] = 0.0;
        rstat[b + RS_LSE] = 0.0;
        rstat[b + RS_DY] = 0.0;
        rstat[b + RS_R] = 0.0;
        rstat[b + 7u] = 0.0;
    }
}

// ---------------------------------------------------------------------------------------------
// Per sample: margin, log-sum-exp, d loss / d wf in place.

// ln(1 + v) for v >= 0, accurate for small v: WGSL's log only promises an absolute error of
// 2^-21 near 1, and compilers may fold (1 + v) - 1 into v, so small v take the series of
// 2 atanh(t), t = v / (2 + v) (t < 0.005: the next term is below 1e-21 relative).
fn log1p(v: f32) -> f32 {
    if (v < 0.01) {
        let t = v / (2.0 + v);
        let t2 = t * t;
        return 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (0.2 + t2 * (1.0 / 7.0))));
    }
    return log(1.0 + v);
}

// A NaN made at run time: WGSL compilers (Tint) reject a NaN constant expression.
fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u + min(P.loss_type, 0u));
}

// The clamped label of row i (and whether it was out of range).
fn label_of(i: u32) -> vec2<u32> {
    let C = P.labels_out;
    var y = labels[i];
    let bad = y < 0 || u32(y) >= C;
    if (bad) {
        y = clamp(y, 0, i32(C) - 1);
    }
    return vec2<u32>(u32(y), select(0u, 1u, bad));
}

// The logits wf of columns 4q .. 4q + 3 of the row at `base` of L (x W^T there, unscaled):
// (L xinv_i) winv_j.
fn wf4(base: u32, q: u32, xs: f32) -> vec4<f32> {
    let jc = min(vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(P.classes - 1u))
        + vec4<u32>(P.woff);
    return L4[base / 4u + q] * xs * vec4<f32>(winv[jc.x], winv[jc.y], winv[jc.z], winv[jc.w]);
}

// Pass 1, per row of a chunk: online max / sum of exp(z_j - M) over the chunk's non-target
// classes (z_j = s wf_ij), a fixed-order workgroup combine, merged into the row's (M, O).
@compute @workgroup_size(256)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg);
    if (i >= P.rows) {
        return;
    }
    let yl = label_of(i);
    let base = i * P.ld;
    // The target's column in this chunk, or past its end.
    let g0 = P.cbase + P.c0;
    let yc = select(P.classes, yl.x - g0, yl.x >= g0 && yl.x < g0 + P.classes);
    let xs = xinv[i];
    // Four running (max, sum) pairs, one per lane of the accesses (V = vec4 here), each logit
    // folded in by common.wgsl's fold_max: one exponential and no branch. The target and the
    // columns past the chunk enter as -3.4e38, below the initial maximum -3e38: their term
    // exp(-|z - m|) is 0 and the sums and maxima are kept.
    var m4 = V(-3.0e38);
    var s4 = V(0.0);
    let quads = (P.classes + 3u) / 4u;
    for (var q = lid; q < quads; q = q + WG) {
        let j = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
        let skip = (j == vec4<u32>(yc)) | (j >= vec4<u32>(P.classes));
        let f = fold_max(&m4, select(P.s * wf4(base, q, xs), V(-3.4e38), skip));
        s4 = s4 * f.r + f.q;
    }
    let mx = hmax(m4);
    let sm = dot(s4, exp(m4 - V(mx)));
    let Mc = wg_max(lid, mx);
    let Oc = wg_sum(lid, sm * exp(mx - Mc));
    if (lid == 0u) {
        let b = i * RS;
        let M0 = rstat[b + RS_M];
        let O0 = rstat[b + RS_O];
        let M1 = max(M0, Mc);
        rstat[b + RS_M] = M1;
        rstat[b + RS_O] = O0 * exp(M0 - M1) + Oc * exp(Mc - M1);
        if (yc < P.classes) {
            rstat[b + RS_C] = L4[(base + yc) / 4u][yc % 4u] * xs * winv[yc + P.woff];
        }
    }
}

// Per row, after pass 1: the margin, the loss, lse and d loss / d wf at the target.
@compute @workgroup_size(64)
fn finish(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg) * 64u + lid;
    if (i >= P.rows) {
        return;
    }
    let yl = label_of(i);
    let bad = yl.y != 0u;
    let b = i * RS;
    let c = rstat[b + RS_C];

    // The target logit num(c) and d num / d c (torch.clamp passes the gradient inside [lo, hi]).
    var num = 0.0;
    var dnum = 0.0;
    if (P.loss_type == 2u) {
        num = P.s * (c - P.m);
        dnum = P.s;
    } else {
        let u = min(max(c, P.lo), P.hi);
        let inside = c >= P.lo && c <= P.hi;
        var sq = sqrt(max((1.0 - u) * (1.0 + u), 0.0)); // sin(acos(u))
        if (!inside) {
            // At the clamp, f32 cannot hold 1 - eps (1 - 1e-7 rounds to 1 - 1.19e-7), which
            // would move sin(acos(.)) by 5%: use the exact value from the host.
            sq = P.sqb;
        }
        if (P.loss_type == 0u) {
            // cos(a + m) = u cos m - sin a sin m; d/du = cos m + u sin m / sin a.
            num = P.s * (u * P.cos_m - sq * P.sin_m);
            if (inside) {
                dnum = P.s * (P.cos_m + u * P.sin_m / sq);
            }
        } else {
            let ang = atan2_acc(sq, u);
            let sc = sincos_acc(P.m * ang);
            num = P.s * sc.y;
            if (inside) {
                dnum = P.s * P.m * sc.x / sq;
            }
        }
    }
    let M = rstat[b + RS_M];
    let O = rstat[b + RS_O];
    // -L_i = ln(exp(num) + sum_j exp(z_j)) - num, without cancellation when the target
    // dominates (log1p) and without overflow when it does not.
    var loss = 0.0;
    if (num >= M) {
        loss = log1p(O * exp(M - num));
    } else {
        loss = (M - num) + log(exp(num - M) + O);
    }
    let lse = num + loss;
    // 1 - softmax_y = sum_{j != y} softmax_j, exact for a dominant target too.
    let rest = O * exp(M - lse);
    rstat[b + RS_LSE] = lse;
    rstat[b + RS_DY] = -P.gscale * rest * dnum;
    if (bad) {
        sloss[i] = nan();
        atomicOr(&flag[0], 1u);
    } else {
        sloss[i] = loss;
    }
}

// Pass 2, per row of a chunk: d loss / d wf over L in place; r_i += sum_j dwf_ij wf_ij
// (= x^_i . d x^_i), in chunk order.
@compute @workgroup_size(256)
fn grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg);
    if (i >= P.rows) {
        return;
    }
    let yl = label_of(i);
    let bad = yl.y != 0u;
    let base = i * P.ld;
    let b = i * RS;
    let lse = rstat[b + RS_LSE];
    let dy = rstat[b + RS_DY];
    let xs = xinv[i];
    let g0 = P.cbase + P.c0;
    let yc = select(P.classes, yl.x - g0, yl.x >= g0 && yl.x < g0 + P.classes);
    var r = 0.0;
    let quads = (P.classes + 3u) / 4u;
    for (var q = lid; q < quads; q = q + WG) {
        let j = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
        let jc = min(j, vec4<u32>(P.classes - 1u)) + vec4<u32>(P.woff);
        let wi = vec4<f32>(winv[jc.x], winv[jc.y], winv[jc.z], winv[jc.w]);
        let v = L4[base / 4u + q] * xs * wi;
        var d = P.gscale * P.s * exp(P.s * v - lse);
        d = select(d, vec4<f32>(dy), j == vec4<u32>(yc));
        d = select(d, vec4<f32>(0.0), (j >= vec4<u32>(P.classes)) | vec4<bool>(bad));
        r = r + dot(d, select(v, vec4<f32>(0.0), j >= vec4<u32>(P.classes)));
        // G'' = G diag(winv) scaled by xinv_i: the products then need no scales.
        var g = d * xs * wi;
        // Subnormal gradients flushed to zero: their products are below f32's normal range,
        // and CPU adapters (llvmpipe) take a microcode assist on every operation with one
        // (a product over subnormal values runs 30 times slower).
        g = select(g, vec4<f32>(0.0), abs(g) < vec4<f32>(1.17549435e-38));
        L4[base / 4u + q] = g;
    }
    let rt = wg_sum(lid, r);
    if (lid == 0u) {
        rstat[b + RS_R] = rstat[b + RS_R] + rt;
    }
}

// dx_i -= r_i xinv_i^2 [||x_i|| >= 1e-12] x_i, one workgroup per row.
@compute @workgroup_size(256)
fn proj(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg);
    if (i >= P.rows) {
        return;
    }
    let b = i * RS;
    let xi = xinv[i];
    let coef = rstat[b + RS_R] * xi * xi * rstat[b + RS_VALID];
    let base = i * P.features;
    for (var k = lid; k < P.features; k = k + WG) {
        gx[base + k] = gx[base + k] - coef * x[base + k];
    }
}

// ---------------------------------------------------------------------------------------------
// Through the weight normalisation, per class row.

@compute @workgroup_size(256)
fn wgrad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg);
    if (j >= P.classes) {
        return;
    }
    let base = j * P.features;
    var sq = 0.0;
    var dot = 0.0;
    for (var k = lid; k < P.features; k = k + WG) {
        let v = w[base + k];
        sq = sq + v * v;
        dot = dot + v * dwh[base + k];
    }
    let n = sqrt(wg_sum(lid, sq));
    let d = wg_sum(lid, dot);
    let inv = 1.0 / max(n, NORM_EPS);
    // dW = P - W^ (W^ . P) = P - W inv^2 (W . P); the projection only where the norm is not
    // clamped.
    var proj = 0.0;
    if (n >= NORM_EPS) {
        proj = inv * inv * d;
    }
    for (var k = lid; k < P.features; k = k + WG) {
        let idx = base + k;
        let v = dwh[idx] - w[idx] * proj;
        if ((P.mode & 1u) != 0u) {
            gw[idx] = gw[idx] + v;
        } else {
            gw[idx] = v;
        }
    }
}

// wgrad with P already in gw (no accumulation into an existing gradient): in place.
@compute @workgroup_size(256)
fn wgrad_inplace(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg);
    if (j >= P.classes) {
        return;
    }
    let base = j * P.features;
    var sq = 0.0;
    var dot = 0.0;
    for (var k = lid; k < P.features; k = k + WG) {
        let v = w[base + k];
        sq = sq + v * v;
        dot = dot + v * gw[base + k];
    }
    let n = sqrt(wg_sum(lid, sq));
    let d = wg_sum(lid, dot);
    let inv = 1.0 / max(n, NORM_EPS);
    var proj = 0.0;
    if (n >= NORM_EPS) {
        proj = inv * inv * d;
    }
    for (var k = lid; k < P.features; k = k + WG) {
        let idx = base + k;
        gw[idx] = gw[idx] - w[idx] * proj;
    }
}

// wnorm, wgrad and wgrad_inplace with one thread per class row (`_t`: the CPU adapters'
// kernels): a workgroup owns WG rows and has no barrier. One workgroup per row of 512 features
// cost lavapipe about 2 us each, ten times the time of its loads. Four partial sums per row.
fn w_sq_t(base: u32) -> f32 {
    let f4 = P.features & ~3u;
    var a = vec4<f32>(0.0);
    for (var k = 0u; k < f4; k = k + 4u) {
        let v = vec4<f32>(w[base + k], w[base + k + 1u], w[base + k + 2u], w[base + k + 3u]);
        a = a + v * v;
    }
    for (var k = f4; k < P.features; k = k + 1u) {
        a.x = a.x + w[base + k] * w[base + k];
    }
    return (a.x + a.y) + (a.z + a.w);
}

@compute @workgroup_size(256)
fn wnorm_t(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg) * WG + lid;
    if (j >= P.classes) {
        return;
    }
    let n = sqrt(w_sq_t(j * P.features));
    if (P.normw != 0u) {
        winv[j] = 1.0 / max(n, NORM_EPS);
    } else {
        winv[j] = 1.0;
    }
}

// The projection factor of row j: inv^2 (W . P) where the norm is not clamped, else 0.
fn w_proj_t(n: f32, dot: f32) -> f32 {
    let inv = 1.0 / max(n, NORM_EPS);
    return select(0.0, inv * inv * dot, n >= NORM_EPS);
}

@compute @workgroup_size(256)
fn wgrad_t(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg) * WG + lid;
    if (j >= P.classes) {
        return;
    }
    let base = j * P.features;
    var dot = vec4<f32>(0.0);
    let f4 = P.features & ~3u;
    for (var k = 0u; k < f4; k = k + 4u) {
        let i = base + k;
        dot = dot + vec4<f32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]) *
              vec4<f32>(dwh[i], dwh[i + 1u], dwh[i + 2u], dwh[i + 3u]);
    }
    for (var k = f4; k < P.features; k = k + 1u) {
        dot.x = dot.x + w[base + k] * dwh[base + k];
    }
    let proj = w_proj_t(sqrt(w_sq_t(base)), (dot.x + dot.y) + (dot.z + dot.w));
    for (var k = 0u; k < P.features; k = k + 1u) {
        let idx = base + k;
        let v = dwh[idx] - w[idx] * proj;
        if ((P.mode & 1u) != 0u) {
            gw[idx] = gw[idx] + v;
        } else {
            gw[idx] = v;
        }
    }
}

@compute @workgroup_size(256)
fn wgrad_inplace_t(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_index(wid, nwg) * WG + lid;
    if (j >= P.classes) {
        return;
    }
    let base = j * P.features;
    var dot = vec4<f32>(0.0);
    let f4 = P.features & ~3u;
    for (var k = 0u; k < f4; k = k + 4u) {
        let i = base + k;
        dot = dot + vec4<f32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]) *
              vec4<f32>(gw[i], gw[i + 1u], gw[i + 2u], gw[i + 3u]);
    }
    for (var k = f4; k < P.features; k = k + 1u) {
        dot.x = dot.x + w[base + k] * gw[base + k];
    }
    let proj = w_proj_t(sqrt(w_sq_t(base)), (dot.x + dot.y) + (dot.z + dot.w));
    for (var k = 0u; k < P.features; k = k + 1u) {
        let idx = base + k;
        gw[idx] = gw[idx] - w[idx] * proj;
    }
}

@compute @workgroup_size(1)
fn finalize() {
    loss_out[0] = totals[0] * P.aux;
}

// W -= lr * g over a window of elements, 4 per thread (groups of 4 * WG elements).
@compute @workgroup_size(256)
fn sgd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = (g * 4u + k) * WG + lid;
        if (i < P.rows) {
            wmut[i] = wmut[i] - P.aux * sgd_g[i];
        }
    }
}
