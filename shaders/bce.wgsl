// WeightedBCEWithLogitsLoss (deepml) and BCEWithLogitsLoss (PyTorch). KIND is set when the
// shader is composed: 0 = weighted (deepml's formula), 1 = PyTorch's.
//   KIND 0: l = -(w_p y ln(sigmoid(x) + epsilon) + w_n (1 - y) ln(sigmoid(-x) + epsilon))
//   KIND 1: l = w (pw y softplus(-x) + (1 - y) softplus(x)), w and pw broadcast from small
//           buffers (`weight[((base_r + i) / stride + base_q) % period]`; a 1-element 1.0
//           buffer when absent, also bound, unused, by KIND 0).
// Single-read kernels: the gradient of `mean` / `sum` does not depend on the total, so one pass
// reads x and t once, writes the gradient once (reads it too with accumulate) and one partial
// sum per tile of TILE = ITEMS * WG elements (`stats_grad`); reduce.wgsl folds the partials and
// `finalize` scales the total. `none` writes the per-element loss instead of partials.

const ITEMS: u32 = 32u;

struct Params {
    n: u32,          // elements in this window
    tile_base: u32,  // index of the window's first tile among all tiles
    tiles: u32,      // tiles of the whole tensor
    flags: u32,      // bit 0: add to the gradient already in `grad`
    w_stride: u32,   // weight broadcast: value index ((w_base_r + i) / w_stride + w_base_q) % w_period
    w_period: u32,
    w_base_q: u32,
    w_base_r: u32,
    pw_stride: u32,  // pos_weight broadcast, likewise
    pw_period: u32,
    pw_base_q: u32,
    pw_base_r: u32,
    grad_scale: f32, // upstream scale times d(reduction): 1/N for mean
    loss_scale: f32, // 1/N for mean, 1 for sum
    w_p: f32,
    w_n: f32,
    epsilon: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read> totals: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> elem_loss: array<f32>;
@group(0) @binding(8) var<storage, read> weight: array<f32>;
@group(0) @binding(9) var<storage, read> pos_weight: array<f32>;

fn put_grad(i: u32, g: f32) {
    if ((P.flags & 1u) != 0u) {
        grad[i] = grad[i] + g;
    } else {
        grad[i] = g;
    }
}

// ln(1 + exp(-a)) for a >= 0, accurate also where exp(-a) is below the f32 resolution of 1.
fn log1p_exp_neg(a: f32) -> f32 {
    let e = exp(-a);
    if (e < 1e-4) {
        return e * (1.0 - 0.5 * e);
    }
    return log(1.0 + e);
}

// softplus(x) = ln(1 + exp(x)).
fn softplus_acc(v: f32) -> f32 {
    return max(v, 0.0) + log1p_exp_neg(abs(v));
}

// ln(sigmoid(z) + eps), given s = sigmoid(z): with eps = 0 it is the exact log-sigmoid
// -softplus(-z), finite where sigmoid(z) underflows to 0.
fn log_sigmoid_eps(z: f32, s: f32, eps: f32) -> f32 {
    if (eps == 0.0) {
        return -softplus_acc(-z);
    }
    return log(s + eps);
}

// (loss of element i of the window, its derivative with respect to x)
fn elem(i: u32) -> vec2<f32> {
    let xv = x[i];
    let y = t[i];
    // One exp serves both sigmoids and both softplus terms: e = exp(-|x|).
    let e = exp(-abs(xv));
    let r = 1.0 / (1.0 + e);
    let pos = select(e * r, r, xv >= 0.0); // sigmoid(x)
    let neg = select(r, e * r, xv >= 0.0); // sigmoid(-x), never 1 - sigmoid(x)
    var l1p = log(1.0 + e); // ln(1 + exp(-|x|)), accurate where e is below f32's resolution of 1
    if (e < 1e-4) {
        l1p = e * (1.0 - 0.5 * e);
    }
    if (KIND == 0u) {
        let eps = P.epsilon;
        let l = -(P.w_p * y * log_sigmoid_eps(xv, pos, eps) + P.w_n * (1.0 - y) * log_sigmoid_eps(-xv, neg, eps));
        // d/dx ln(sigmoid(x) + eps) = neg * pos / (pos + eps); the ratio is 1 when both are 0.
        var rp = 1.0;
        if (pos + eps > 0.0) {
            rp = pos / (pos + eps);
        }
        var rn = 1.0;
        if (neg + eps > 0.0) {
            rn = neg / (neg + eps);
        }
        let d = -(P.w_p * y * neg * rp - P.w_n * (1.0 - y) * pos * rn);
        return vec2<f32>(l, d);
    }
    // The broadcast indices only where a weight varies (integer division is slow on some
    // adapters; the branch is uniform).
    var w = weight[0];
    if (P.w_period > 1u) {
        w = weight[((P.w_base_r + i) / P.w_stride + P.w_base_q) % P.w_period];
    }
    var pw = pos_weight[0];
    if (P.pw_period > 1u) {
        pw = pos_weight[((P.pw_base_r + i) / P.pw_stride + P.pw_base_q) % P.pw_period];
    }
    // softplus(+-x) = max(+-x, 0) + ln(1 + exp(-|x|))
    let l = w * (pw * y * (max(-xv, 0.0) + l1p) + (1.0 - y) * (max(xv, 0.0) + l1p));
    let d = w * ((1.0 - y) * pos - pw * y * neg);
    return vec2<f32>(l, d);
}

@compute @workgroup_size(256)
fn stats_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g * ITEMS * WG >= P.n) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < ITEMS; k = k + 1u) {
        let i = (g * ITEMS + k) * WG + lid;
        if (i < P.n) {
            let e = elem(i);
            acc = acc + e.x;
            put_grad(i, e.y * P.grad_scale);
        }
    }
    let s = wg_sum(lid, acc);
    if (lid == 0u) {
        partials[P.tile_base + g] = s;
    }
}

@compute @workgroup_size(1)
fn finalize() {
    loss_out[0] = totals[0] * P.loss_scale;
}

// reduction = "none": the loss of every element and its gradient.
@compute @workgroup_size(256)
fn none(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    for (var k = 0u; k < ITEMS; k = k + 1u) {
        let i = (g * ITEMS + k) * WG + lid;
        if (i < P.n) {
            let e = elem(i);
            elem_loss[i] = e.x;
            put_grad(i, e.y * P.grad_scale);
        }
    }
}
