// AngularPenaltySMLoss (ArcFace, SphereFace, CosFace): value and the gradients with respect to
// x [N, F] and the raw class weight W [C, F] (F = in_features, C = out_features).
//
// Passes, in the order the host records them (R = rows of a row window, Cw = classes of a
// class window; the host windows rows and classes so that every binding fits the device):
//   wnorm   one workgroup per class row: winv_j = 1 / max(||W_j||, 1e-12), or 1 without
//           normalize_weight.                                   reads C F, writes C
//   xnorm   one workgroup per sample row: xstat_i = (xinv_i, 1 if ||x_i|| >= 1e-12 else 0).
//                                                               reads N F, writes 2 N
//   fwd     64 x 64 tiles of wf = (x W^T) * xinv_i * winv_j in workgroup memory (16-deep K
//           slices): the logits buffer [N, C], the ONE N x C buffer of the loss.
//                                                               reads N F C / 64 + C F N / 64, writes N C
//   rows    one workgroup per sample: label (clamped, error flag), target numerator with the
//           margin, log-sum-exp (online max / sum, one read), then d loss / d wf written over
//           the logits in place, the per-sample loss, and r_i = sum_j dwf_ij wf_ij
//           (= x^_i . d x^_i), kept as the projection coefficient r_i xinv_i^2 in xstat_i.y.
//                                                               reads 2 N C, writes N C + 2 N
//   dx      64 x 64 tiles of dx = xinv_i (dwf diag(winv) W)_i - coef_i x_i, accumulated over
//           class windows (first window honours GradOpts.accumulate, later ones add).
//                                                               reads N C F / 64 + C F N / 64 + N F
//   dw      64 x 64 tiles of d W^ = dwf^T diag(xinv) x, accumulated over row windows: into the
//           gradient itself without normalize_weight, else into a [C, F] scratch.
//                                                               reads N C F / 64 + N F C / 64
//   wgrad   (normalize_weight) one workgroup per class row: dW = (dW^ - W^ (W^ . dW^)) winv,
//           or dW^ / 1e-12 where the norm is clamped.           reads 2 C F, writes C F
//   (A product whose reduction is longer than 16384 runs as several dispatches that add into
//   their output in order: one more read and write of the output per extra dispatch.)
//   finalize  loss = sum of the per-sample losses (tree reduction, reduce.wgsl) * 1/N or 1.
//   sgd     W -= lr * g, element-wise, in place.               reads 2 C F, writes C F
//
// Out-of-range labels never index out of bounds: the label is clamped into [0, C), the
// sample's loss is NaN (so a mean or sum is NaN), its gradient row is zero, and bit 0 of
// flag[0] is set (atomicOr, the only atomic: an integer one). No float atomics; every sum has
// a fixed order, so results are bit-identical from run to run.

struct Params {
    rows: u32,      // rows of the row window (sgd: elements of the window)
    classes: u32,   // classes of the class window
    features: u32,  // F
    out: u32,       // C, the row stride of the logits
    c0: u32,        // first class of the class window (column offset in the logits)
    tiles_m: u32,   // matmul output tiles along M
    tiles_n: u32,   // matmul output tiles along N
    mode: u32,      // bit 0: add to the output instead of overwriting; bit 1: dx projection term
    loss_type: u32, // 0 arcface, 1 sphereface, 2 cosface
    normw: u32,     // normalize_weight
    kb: u32,        // matmul: first index of the reduction range of this dispatch
    ke: u32,        // matmul: end of the reduction range of this dispatch
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
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;
@group(0) @binding(5) var<storage, read_write> xstat: array<vec2<f32>>;
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
        xstat[i] = vec2<f32>(1.0 / max(n, NORM_EPS), select(0.0, 1.0, n >= NORM_EPS));
    }
}

// ---------------------------------------------------------------------------------------------
// Tiled matrix products: 64 x 64 outputs per workgroup, 4 x 4 per thread, K in slices of 16.
// As[k][m / 4][m % 4], Bs[k][n / 4][n % 4] (vec4 rows of 16); thread (tx, ty) owns the 4 x 4 block
// of rows 4 ty + a and columns 4 tx + b.
// One dispatch covers the reduction range [kb, ke); the host splits long reductions into
// ranges of at most 16384 (1024 slices) and adds them up in order (mode bit 0), because
// llvmpipe (lavapipe) stops every loop of an invocation after 65535 iterations in total.

const TILE: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;
var<private> acc: array<vec4<f32>, 4>;

fn mm_clear() {
    for (var q = 0u; q < 4u; q = q + 1u) {
        acc[q] = vec4<f32>(0.0);
    }
}

fn mm_slice(tx: u32, ty: u32) {
    for (var k = 0u; k < KT; k = k + 1u) {
        let a = As[k * 16u + ty];
        let b = Bs[k * 16u + tx];
        acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
        acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
        acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
        acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
    }
}

// wf[i, c0 + j] = (x_i . W_j) xinv_i winv_j. M = rows, N = classes, K = features.
@compute @workgroup_size(256)
fn fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= P.tiles_m * P.tiles_n) {
        return;
    }
    let m0 = (g % P.tiles_m) * TILE;
    let n0 = (g / P.tiles_m) * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let F = P.features;
    mm_clear();
    for (var k0 = P.kb; k0 < P.ke; k0 = k0 + KT) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = lid + r * WG;
            let mm = e / KT;
            let kk = e % KT;
            let gk = k0 + kk;
            var a = 0.0;
            let gi = m0 + mm;
            if (gi < P.rows && gk < P.ke) {
                a = x[gi * F + gk];
            }
            As[kk * 16u + mm / 4u][mm % 4u] = a;
            var b = 0.0;
            let gj = n0 + mm;
            if (gj < P.classes && gk < P.ke) {
                b = w[gj * F + gk];
            }
            Bs[kk * 16u + mm / 4u][mm % 4u] = b;
        }
        workgroupBarrier();
        mm_slice(tx, ty);
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a = a + 1u) {
        let gi = m0 + ty * 4u + a;
        if (gi >= P.rows) {
            continue;
        }
        let xi = xstat[gi].x;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let gj = n0 + tx * 4u + b;
            if (gj < P.classes) {
                let idx = gi * P.out + P.c0 + gj;
                let v = acc[a][b] * xi * winv[gj];
                if ((P.mode & 1u) != 0u) {
                    logits[idx] = logits[idx] + v;
                } else {
                    logits[idx] = v;
                }
            }
        }
    }
}

// d x_i = xinv_i sum_j dwf_ij winv_j W_j  (- coef_i x_i on the first class window).
// M = rows, N = features, K = classes of the window.
@compute @workgroup_size(256)
fn dx(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
      @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= P.tiles_m * P.tiles_n) {
        return;
    }
    let m0 = (g % P.tiles_m) * TILE;
    let n0 = (g / P.tiles_m) * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let F = P.features;
    mm_clear();
    for (var k0 = P.kb; k0 < P.ke; k0 = k0 + KT) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = lid + r * WG;
            // A[m = row, k = class]: contiguous along the class.
            let mm = e / KT;
            let kk = e % KT;
            let gi = m0 + mm;
            let gj = k0 + kk;
            var a = 0.0;
            if (gi < P.rows && gj < P.ke) {
                a = logits[gi * P.out + P.c0 + gj] * winv[gj];
            }
            As[kk * 16u + mm / 4u][mm % 4u] = a;
            // B[k = class, n = feature]: contiguous along the feature.
            let bk = e / TILE;
            let bn = e % TILE;
            let bj = k0 + bk;
            let bf = n0 + bn;
            var b = 0.0;
            if (bj < P.ke && bf < F) {
                b = w[bj * F + bf];
            }
            Bs[bk * 16u + bn / 4u][bn % 4u] = b;
        }
        workgroupBarrier();
        mm_slice(tx, ty);
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a = a + 1u) {
        let gi = m0 + ty * 4u + a;
        if (gi >= P.rows) {
            continue;
        }
        let st = xstat[gi];
        for (var b = 0u; b < 4u; b = b + 1u) {
            let gf = n0 + tx * 4u + b;
            if (gf < F) {
                let idx = gi * F + gf;
                var v = acc[a][b] * st.x;
                if ((P.mode & 2u) != 0u) {
                    v = v - st.y * x[idx];
                }
                if ((P.mode & 1u) != 0u) {
                    gx[idx] = gx[idx] + v;
                } else {
                    gx[idx] = v;
                }
            }
        }
    }
}

// d W^_j = sum_i dwf_ij xinv_i x_i. M = classes of the window, N = features, K = rows.
@compute @workgroup_size(256)
fn dw(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
      @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= P.tiles_m * P.tiles_n) {
        return;
    }
    let m0 = (g % P.tiles_m) * TILE;
    let n0 = (g / P.tiles_m) * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let F = P.features;
    mm_clear();
    for (var k0 = P.kb; k0 < P.ke; k0 = k0 + KT) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = lid + r * WG;
            let kk = e / TILE;
            let col = e % TILE;
            let gi = k0 + kk;
            // A[m = class, k = row] = dwf[row, class]: contiguous along the class.
            let gj = m0 + col;
            var a = 0.0;
            if (gi < P.ke && gj < P.classes) {
                a = logits[gi * P.out + P.c0 + gj];
            }
            As[kk * 16u + col / 4u][col % 4u] = a;
            // B[k = row, n = feature] = xinv_i x_if.
            let gf = n0 + col;
            var b = 0.0;
            if (gi < P.ke && gf < F) {
                b = x[gi * F + gf] * xstat[gi].x;
            }
            Bs[kk * 16u + col / 4u][col % 4u] = b;
        }
        workgroupBarrier();
        mm_slice(tx, ty);
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a = a + 1u) {
        let gj = m0 + ty * 4u + a;
        if (gj >= P.classes) {
            continue;
        }
        for (var b = 0u; b < 4u; b = b + 1u) {
            let gf = n0 + tx * 4u + b;
            if (gf < F) {
                let idx = gj * F + gf;
                if ((P.mode & 1u) != 0u) {
                    gw[idx] = gw[idx] + acc[a][b];
                } else {
                    gw[idx] = acc[a][b];
                }
            }
        }
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

@compute @workgroup_size(256)
fn rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_index(wid, nwg);
    if (i >= P.rows) {
        return;
    }
    let C = P.out;
    let base = i * C;
    var y = labels[i];
    let bad = y < 0 || u32(y) >= C;
    if (bad) {
        y = clamp(y, 0, i32(C) - 1);
    }
    let yu = u32(y);
    let c = logits[base + yu];

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

    // Online max / sum of exp over the other classes (z_j = s wf_ij), one read, then a
    // fixed-order workgroup combine: M = max_j z_j, O = sum_j exp(z_j - M) over j != y.
    var mx = -3.0e38;
    var sm = 0.0;
    for (var j = lid; j < C; j = j + WG) {
        if (j == yu) {
            continue;
        }
        let z = P.s * logits[base + j];
        if (z > mx) {
            sm = sm * exp(mx - z) + 1.0;
            mx = z;
        } else {
            sm = sm + exp(z - mx);
        }
    }
    let M = wg_max(lid, mx);
    let O = wg_sum(lid, sm * exp(mx - M));
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

    // d loss / d wf over the logits; r = sum_j dwf_ij wf_ij.
    var r = 0.0;
    for (var j = lid; j < C; j = j + WG) {
        let f = logits[base + j];
        var d = 0.0;
        if (j == yu) {
            d = -P.gscale * rest * dnum;
        } else {
            d = P.gscale * P.s * exp(P.s * f - lse);
        }
        if (bad) {
            d = 0.0;
        }
        logits[base + j] = d;
        r = r + d * f;
    }
    let rt = wg_sum(lid, r);
    if (lid == 0u) {
        let st = xstat[i];
        xstat[i] = vec2<f32>(st.x, rt * st.x * st.x * st.y);
        if (bad) {
            sloss[i] = nan();
            atomicOr(&flag[0], 1u);
        } else {
            sloss[i] = loss;
        }
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
    // W^ . dW^ = inv (W . dW^); the projection only where the norm is not clamped.
    var proj = 0.0;
    if (n >= NORM_EPS) {
        proj = inv * inv * d;
    }
    for (var k = lid; k < P.features; k = k + WG) {
        let idx = base + k;
        let v = (dwh[idx] - w[idx] * proj) * inv;
        if ((P.mode & 1u) != 0u) {
            gw[idx] = gw[idx] + v;
        } else {
            gw[idx] = v;
        }
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
