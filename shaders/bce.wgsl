// WeightedBCEWithLogitsLoss (deepml) and BCEWithLogitsLoss (PyTorch). KIND is set when the
// shader is composed: 0 = weighted (deepml's formula), 1 = PyTorch's; BROADCAST 1 where
// weight or pos_weight varies across elements; EXACT 1 where KIND 0's epsilon is 0.
//   KIND 0: l = -(w_p y ln(sigmoid(x) + epsilon) + w_n (1 - y) ln(sigmoid(-x) + epsilon))
//   KIND 1: l = w (pw y softplus(-x) + (1 - y) softplus(x)), w and pw broadcast from small
//           buffers (`weight[((base_r + i) / stride + base_q) % period]`; a 1-element 1.0
//           buffer when absent, also bound, unused, by KIND 0).
// Single-read kernels: the gradient of `mean` / `sum` does not depend on the total, so one pass
// reads x and t once, writes the gradient once (reads it too with accumulate) and one partial
// sum per tile of TILE = ITEMS * WG elements (`stats_grad`); reduce.wgsl folds the partials and
// `finalize` scales the total. `none` writes the per-element loss instead of partials.

const ITEMS: u32 = 32u;
// Accesses per invocation and tile (LANES elements each: kernel.rs LANES_1 / LANES_4; the
// four-lane variant runs only on windows whose length is a multiple of 4).
const UNITS: u32 = ITEMS / LANES;

struct Params {
    n: u32,          // elements in this window
    tile_base: u32,  // index of the window's first tile among all tiles
    tiles: u32,      // tiles of the whole tensor
    flags: u32,      // bit 0: accumulate (the kernels use the constant ACCUM: kernel.rs)
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
    w_one: f32,      // the weight where it does not vary (w_period 1): a uniform, not a load
    pw_one: f32,     // likewise pos_weight
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> t: array<V>;
@group(0) @binding(3) var<storage, read_write> grad: array<V>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read> totals: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> elem_loss: array<V>;
@group(0) @binding(8) var<storage, read> weight: array<f32>;
@group(0) @binding(9) var<storage, read> pos_weight: array<f32>;

fn put_grad(j: u32, g: V) {
    if (ACCUM == 1u) {
        grad[j] = grad[j] + g;
    } else {
        grad[j] = g;
    }
}

// ln(1 + e) for e = exp(-a), a >= 0: accurate also where e is below f32's resolution of 1.
fn log1p_small(e: V) -> V {
    return select(log(1.0 + e), e * (1.0 - 0.5 * e), e < V(1e-4));
}

// softplus(v) = ln(1 + exp(v)).
fn softplus_acc(v: V) -> V {
    return max(v, V(0.0)) + log1p_small(exp(-abs(v)));
}

// ln(sigmoid(z) + eps), given s = sigmoid(z): with eps = 0 (the EXACT variant) it is the exact
// log-sigmoid -softplus(-z), finite where sigmoid(z) underflows to 0.
fn log_sigmoid_eps(z: V, s: V, eps: f32) -> V {
    if (EXACT == 1u) {
        return -softplus_acc(-z);
    }
    return log(s + eps);
}

// The broadcast weight of element i (`weight` or `pos_weight`, by its parameters).
fn w_at(i: u32) -> f32 {
    return weight[((P.w_base_r + i) / P.w_stride + P.w_base_q) % P.w_period];
}
fn pw_at(i: u32) -> f32 {
    return pos_weight[((P.pw_base_r + i) / P.pw_stride + P.pw_base_q) % P.pw_period];
}

struct Pair {
    l: V, // loss
    d: V, // its derivative with respect to x
}

// Access j of the window: elements LANES j .. LANES j + LANES - 1.
fn elem(j: u32) -> Pair {
    let xv = x[j];
    let y = t[j];
    // One exp serves both sigmoids and both softplus terms: e = exp(-|x|).
    let e = exp(-abs(xv));
    let r = 1.0 / (1.0 + e);
    let nonneg = xv >= V(0.0);
    let pos = select(e * r, r, nonneg); // sigmoid(x)
    let neg = select(r, e * r, nonneg); // sigmoid(-x), never 1 - sigmoid(x)
    if (KIND == 0u) {
        let eps = P.epsilon;
        let l = -(P.w_p * y * log_sigmoid_eps(xv, pos, eps) + P.w_n * (1.0 - y) * log_sigmoid_eps(-xv, neg, eps));
        // d/dx ln(sigmoid(x) + eps) = neg * pos / (pos + eps); the ratio is 1 when both are 0.
        let rp = select(V(1.0), pos / (pos + eps), pos + eps > V(0.0));
        let rn = select(V(1.0), neg / (neg + eps), neg + eps > V(0.0));
        let d = -(P.w_p * y * neg * rp - P.w_n * (1.0 - y) * pos * rn);
        return nan_kept(Pair(l, d), xv, y);
    }
    let l1p = log1p_small(e); // ln(1 + exp(-|x|))
    // The broadcast indices only where a weight varies: integer division is slow on some
    // adapters, and some (lavapipe) run both sides of even a uniform branch, so a variant
    // without varying weights (BROADCAST 0) leaves the code out.
    var w = V(P.w_one);
    if (BROADCAST == 1u && P.w_period > 1u) {
        let i = j * LANES;
        w = lanes(w_at(i), w_at(i + 1u), w_at(i + 2u), w_at(i + 3u));
    }
    var pw = V(P.pw_one);
    if (BROADCAST == 1u && P.pw_period > 1u) {
        let i = j * LANES;
        pw = lanes(pw_at(i), pw_at(i + 1u), pw_at(i + 2u), pw_at(i + 3u));
    }
    // softplus(+-x) = max(+-x, 0) + ln(1 + exp(-|x|))
    let l = w * (pw * y * (max(-xv, V(0.0)) + l1p) + (1.0 - y) * (max(xv, V(0.0)) + l1p));
    let d = w * ((1.0 - y) * pos - pw * y * neg);
    return nan_kept(Pair(l, d), xv, y);
}

// The loss and gradient of an element, or NaN where the logit or the target is NaN (the max of
// softplus and the epsilon of the log would drop it on some implementations).
fn nan_kept(p: Pair, xv: V, y: V) -> Pair {
    return Pair(keep_nan(keep_nan(p.l, y), xv), keep_nan(keep_nan(p.d, y), xv));
}

@compute @workgroup_size(256)
fn stats_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let units = P.n / LANES;
    if (g * UNITS * WG >= units) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < UNITS; k = k + 1u) {
        let j = (g * UNITS + k) * WG + lid;
        if (j < units) {
            let e = elem(j);
            acc = acc + hsum(e.l);
            put_grad(j, e.d * P.grad_scale);
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
    let units = P.n / LANES;
    for (var k = 0u; k < UNITS; k = k + 1u) {
        let j = (g * UNITS + k) * WG + lid;
        if (j < units) {
            let e = elem(j);
            elem_loss[j] = e.l;
            put_grad(j, e.d * P.grad_scale);
        }
    }
}
