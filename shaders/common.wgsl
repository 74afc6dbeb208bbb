// Shared by every deepml shader: the workgroup size, the linear workgroup index of a 2-D grid
// (grids wider than 65535 workgroups wrap into y), and numerics. The workgroup reductions
// (wg_sum, wg_sum2, wg_max over `red` and `red2`) come before this file: wg_tree.wgsl, or
// wg_subgroup.wgsl where the context verified the adapter's subgroups (kernel.rs).

const WG: u32 = 256u;

// The index of this workgroup in a grid dispatched as (x, y, 1).
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The activations work on `V` (kernel.rs: f32, or vec4<f32> in a four-lane variant); a scalar
// in a four-lane variant goes through `lane_of(f(V(x)), 0u)`.

// NaN, told by its bits: WGSL lets an implementation assume that floats are never NaN, so
// `x != x` may be folded away, and its max, min, clamp and exp may drop a NaN (SwiftShader's
// do). keep_nan(v, x) is v, or x itself where x is NaN: a loss term carries its input's NaN
// through selects alone, and the sums after it (additions) keep it.
fn is_nan_v(x: V) -> VB {
    return (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
}
fn keep_nan(v: V, x: V) -> V {
    return select(v, x, is_nan_v(x));
}

// One step of an online softmax with one exponential per value: folds x into the running
// maximum *m and returns how every running sum of exp(. - m) takes x in, sum * r + q * term(x).
// A new maximum rescales the sums by exp(m_old - x) and adds x's term with weight 1; an old one
// keeps them and adds x's term with weight exp(x - m): the same exp(-|x - m|) either way.
struct Fold {
    r: V,
    q: V,
}
fn fold_max(m: ptr<function, V>, x: V) -> Fold {
    let d = x - *m;
    let a = exp(-abs(d));
    let up = d > V(0.0);
    *m = max(*m, x);
    return Fold(select(V(1.0), a, up), select(a, V(1.0), up));
}

// Access k of thread lid in a tile from `first` with `per` accesses per thread: runs of `run`
// threads own run * per consecutive accesses, `run` apart for each thread. A GPU's kernels take
// run = WG (access k at first + k WG + lid, coalesced over the workgroup); a CPU adapter's its
// SIMD width (kernel.rs simd_runs), so that a run reads whole cache lines in a row.
fn strip_at(first: u32, k: u32, lid: u32, per: u32, run: u32) -> u32 {
    return first + (lid / run) * (run * per) + k * run + lid % run;
}

// ln(1 + exp(x)) without overflow or cancellation.
fn softplus(x: V) -> V {
    return max(x, V(0.0)) + log(1.0 + exp(-abs(x)));
}

// The logistic sigmoid, finite for every finite x: one exp of -|x| (never overflows) and no
// divergent branch.
fn sigmoid(x: V) -> V {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    return select(e * r, r, x >= V(0.0));
}

// sigmoid'(x) = sigmoid(x) sigmoid(-x) = e / (1 + e)^2 with e = exp(-|x|): one exp, no
// cancellation (1 - sigmoid(x) would lose it for large x).
fn dsigmoid(x: V) -> V {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    return e * r * r;
}

// Trigonometry accurate to a few float32 ulps. WGSL allows sin and cos an absolute error of
// 2^-11 and atan2 4096 ulps, and some implementations (SwiftShader) use that freedom; a margin
// loss scaled by s = 64 cannot.
const HALF_PI_HI: f32 = 1.5707963705062866;    // float32(pi / 2)
const HALF_PI_LO: f32 = -4.371139000186243e-8; // pi / 2 - HALF_PI_HI

// (sin t, cos t) for |t| up to about 1e4: Cody-Waite reduction by pi/2, then Taylor series on
// [-pi/4, pi/4] (truncation below 2e-9).
fn sincos_acc(t: f32) -> vec2<f32> {
    let k = round(t / HALF_PI_HI);
    let r = (t - k * HALF_PI_HI) - k * HALF_PI_LO;
    let r2 = r * r;
    let s = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0)))));
    let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
    let q = i32(k) & 3;
    if (q == 0) {
        return vec2<f32>(s, c);
    } else if (q == 1) {
        return vec2<f32>(c, -s);
    } else if (q == 2) {
        return vec2<f32>(-s, -c);
    }
    return vec2<f32>(-c, s);
}

// atan(z) for 0 <= z <= 1: above tan(pi/12), atan z = pi/6 + atan((sqrt(3) z - 1) / (z + sqrt(3))),
// then the odd series on |w| <= tan(pi/12) (truncation below 5e-8).
fn atan01_acc(z: f32) -> f32 {
    var w = z;
    var base = 0.0;
    if (z > 0.2679491924) {
        w = (1.7320508076 * z - 1.0) / (z + 1.7320508076);
        base = 0.5235987756;
    }
    let w2 = w * w;
    return base + w * (1.0 + w2 * (-1.0 / 3.0 + w2 * (0.2 + w2 * (-1.0 / 7.0 + w2 * (1.0 / 9.0 + w2 * (-1.0 / 11.0))))));
}

// atan2(y, x) for y >= 0 (an angle in [0, pi]).
fn atan2_acc(y: f32, x: f32) -> f32 {
    let ax = abs(x);
    var a: f32;
    if (y <= ax) {
        a = atan01_acc(y / max(ax, 1e-30));
    } else {
        a = (HALF_PI_HI - atan01_acc(ax / y)) + HALF_PI_LO;
    }
    if (x < 0.0) {
        a = (2.0 * HALF_PI_HI - a) + 2.0 * HALF_PI_LO;
    }
    return a;
}
