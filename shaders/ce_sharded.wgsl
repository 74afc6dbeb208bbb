// Class-sharded CrossEntropyLoss (src/losses/ce_sharded.rs): this rank holds the logits
// x [N, C_r, K] of the classes [offset, offset + C_r) of the whole class range; the labels
// [N, K] are global class indices. One thread per position p = n K + k; its C_r logits sit at
// x[(n C_r + c) K + k].
//
//   stats  per position, over the local classes: m = max_c x_c, s = sum_c exp(x_c - m), the
//          target's logit x_y where this rank owns the label (else 0), and (with smoothing)
//          t = sum_c w_c (m - x_c) (every term >= 0: no cancellation). Written to stats[4 p ..].
//          The host merges the ranks' statistics (MAX of m, then SUM of the rescaled s, ...).
//   grad   with the global lse and the position's coefficients a = (1 - ls) w_y g,
//          b = ls / C g (g: the upstream scale times d(reduction); 0 for an ignored target):
//          dL/dx_c = a (p_c - [c = y]) + b (p_c W - w_c), p_c = exp(x_c - lse), W = sum_c w_c.
// A label is never used as an index unless it lies in this rank's class slice.

struct Params {
    positions: u32, // N K
    inner: u32,     // K: the class stride
    classes: u32,   // C_r: this rank's classes
    offset: u32,    // the global index of this rank's first class
    flags: u32,     // bit 1 weighted, bit 4 smoothing (compute t)
    wsum: f32,      // W: the summed weight of every class (C_total without weight)
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(5) var<storage, read> coef: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;

// The weight of local class c (weight holds this rank's slice of the class weights).
fn local_weight(c: u32) -> f32 {
    if ((P.flags & 2u) != 0u) {
        return weight[c];
    }
    return 1.0;
}

// The local index of the label of position p, or -1 where another rank owns it.
fn local_label(p: u32) -> i32 {
    let y = labels[p];
    let first = i32(P.offset);
    if (y >= first && y - first < i32(P.classes)) {
        return y - first;
    }
    return -1;
}

@compute @workgroup_size(WG)
fn stats(@builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = group_index(wid, nwg) * WG + lid.x;
    if (p >= P.positions) {
        return;
    }
    let K = P.inner;
    let C = P.classes;
    let base = (p / K) * C * K + p % K;
    var m = -3.0e38;
    for (var c = 0u; c < C; c = c + 1u) {
        m = max(m, x[base + c * K]);
    }
    var s = 0.0;
    var t = 0.0;
    let smoothing = (P.flags & 16u) != 0u;
    for (var c = 0u; c < C; c = c + 1u) {
        let v = x[base + c * K];
        s = s + exp(v - m);
        if (smoothing) {
            t = t + local_weight(c) * (m - v);
        }
    }
    var xy = 0.0;
    let yl = local_label(p);
    if (yl >= 0) {
        xy = x[base + u32(yl) * K];
    }
    stats_out[4u * p] = m;
    stats_out[4u * p + 1u] = s;
    stats_out[4u * p + 2u] = xy;
    stats_out[4u * p + 3u] = t;
}

@compute @workgroup_size(WG)
fn grad_pass(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = group_index(wid, nwg) * WG + lid.x;
    if (p >= P.positions) {
        return;
    }
    let K = P.inner;
    let C = P.classes;
    let base = (p / K) * C * K + p % K;
    let lse = coef[3u * p];
    let a = coef[3u * p + 1u];
    let b = coef[3u * p + 2u];
    let yl = local_label(p);
    for (var c = 0u; c < C; c = c + 1u) {
        let i = base + c * K;
        let pr = exp(x[i] - lse);
        var g = a * pr + b * (pr * P.wsum - local_weight(c));
        if (i32(c) == yl) {
            g = g - a;
        }
        if (ACCUM == 1u) {
            grad[i] = grad[i] + g;
        } else {
            grad[i] = g;
        }
    }
}
