// CrossEntropyLoss (PyTorch 2.x) with class-index targets, weight, ignore_index, label smoothing.
// TPR (threads per row) is set when the shader is composed: 1, 8 to 128 or 256. A "row" is one position
// (sample n, spatial index k) of `x [N, C, K]`: its C logits sit at x[(n C + c) K + k].
// A workgroup of WG threads handles WG / TPR consecutive rows.
//
// Passes and traffic (P = N K positions, C classes):
//   weight_sum  (mean only) reads the P labels (+ their class weights): one partial per tile,
//               then reduce.wgsl folds them into W = summed weight of the non-ignored targets.
//   rows_*      per row: read 1 (online softmax: running max and sum), read 2 (p = exp(x - lse),
//               gradient written; with smoothing also sum_c w_c (lse - x_c)), plus one load of
//               x[y]. Logits are read twice (4 P C bytes each), the gradient written once (or
//               read + written with accumulate); no N x C scratch, only one partial per workgroup.
//               (rows_*_q with few classes reads each logit once: see below.)
//   finalize    1 thread: loss = total / W (mean) or total (sum).
// An out-of-range label that is not ignore_index is never used as an index: its row gets a zero
// gradient, a NaN loss, and sets flag[0] = 1 (non-atomic store of the constant 1).

const ITEMS: u32 = 8u;

struct Params {
    rows: u32,       // positions (rows) in this window; targets in this window for weight_sum
    inner: u32,      // K: product of the spatial sizes (the class stride)
    classes: u32,    // C
    flags: u32,      // bit 2 mean (accumulate, weighted, ignore_index and smoothing are the
                     // constants ACCUM, WEIGHTED, IGNORE (ignore_index fits in i32), SMOOTH: lavapipe
                     // runs both sides of a branch on a uniform value, weight loads included)
    ignore: i32,     // ignore_index
    part_base: u32,  // index of this window's first workgroup among all partials
    nan_bits: u32,   // 0x7fc00000: a NaN made at run time
    label_base: u32, // index of this window's first label in `labels` / `elem_loss` (0 when those are windowed too)
    ls: f32,         // label_smoothing
    ls_c: f32,       // label_smoothing / C
    wsum: f32,       // sum of the class weights (C without weight)
    grad_scale: f32, // upstream scale (mean: divided by W in the kernel)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read> wtot: array<f32>;
@group(0) @binding(7) var<storage, read_write> elem_loss: array<f32>;
@group(0) @binding(8) var<storage, read_write> flag: array<u32>;
@group(0) @binding(9) var<storage, read> ltot: array<f32>;
@group(0) @binding(10) var<storage, read_write> loss_out: array<f32>;

fn put_grad(i: u32, g: f32) {
    if (ACCUM == 1u) {
        grad[i] = grad[i] + g;
    } else {
        grad[i] = g;
    }
}

fn class_weight(c: u32) -> f32 {
    if (WEIGHTED == 1u) {
        return weight[c];
    }
    return 1.0;
}

// (status, class) of row r: status 0 = past the window, 1 = ignored, 2 = label out of range,
// 3 = a valid target.
fn classify(r: u32) -> vec2<u32> {
    if (r >= P.rows) {
        return vec2<u32>(0u, 0u);
    }
    let y = labels[P.label_base + r];
    if (IGNORE == 1u && y == P.ignore) {
        return vec2<u32>(1u, 0u);
    }
    if (y < 0 || u32(y) >= P.classes) {
        return vec2<u32>(2u, 0u);
    }
    return vec2<u32>(3u, u32(y));
}

// The loss of row r (the same on every thread of the row); writes the row's gradient.
// `gscale`: upstream scale times d(reduction).
fn row(lid: u32, r: u32, gscale: f32) -> f32 {
    let lane = lid % TPR;
    let st = classify(r);
    let status = st.x;
    let y = st.y;
    let K = P.inner;
    let C = P.classes;
    let base = (r / K) * C * K + r % K;
    let live = status == 3u;
    if (status == 2u) {
        flag[0] = 1u;
    }

    // Read 1: running max and running sum of exp(x - max).
    var m = -3.0e38;
    var s = 0.0;
    if (live) {
        for (var c = lane; c < C; c = c + TPR) {
            let v = x[base + c * K];
            if (v > m) {
                s = s * exp(m - v) + 1.0;
                m = v;
            } else {
                s = s + exp(v - m);
            }
        }
    }
    let mx = seg_max(lid, m);
    let sum = seg_sum(lid, s * exp(m - mx));
    let lse = mx + log(sum);

    // Read 2: the gradient (1 - ls) w_y (p_c - [c = y]) + ls / C (p_c sum_j w_j - w_c).
    var wy = 0.0;
    if (live) {
        wy = class_weight(y);
    }
    let cy = (1.0 - P.ls) * wy * gscale;
    let cs = P.ls_c * gscale;
    var sm = 0.0;
    if (live) {
        for (var c = lane; c < C; c = c + TPR) {
            let i = base + c * K;
            let v = x[i];
            let p = exp(v - lse);
            let wc = class_weight(c);
            var g = cy * p + cs * (p * P.wsum - wc);
            if (c == y) {
                g = g - cy;
            }
            put_grad(i, g);
            sm = sm + wc * (lse - v);
        }
    } else if (status != 0u) {
        for (var c = lane; c < C; c = c + TPR) {
            put_grad(base + c * K, 0.0);
        }
    }
    var smoothed = 0.0;
    if (SMOOTH == 1u) {
        smoothed = seg_sum(lid, sm);
    }
    if (live) {
        return (1.0 - P.ls) * wy * (lse - x[base + y * K]) + P.ls_c * smoothed;
    }
    if (status == 2u) {
        return bitcast<f32>(P.nan_bits);
    }
    return 0.0;
}

// ---------------------------------------------------------------------------------------------
// Rows of contiguous classes (K = 1, C a multiple of LANES), LANES classes per access (the
// host composes LANES 4 and binds x and the gradient here): the same two reads and one write
// as `row`, in a quarter of the accesses.
@group(0) @binding(11) var<storage, read> xc: array<V>;
@group(0) @binding(12) var<storage, read_write> gc: array<V>;

fn put_grad_c(j: u32, g: V) {
    if (ACCUM == 1u) {
        gc[j] = gc[j] + g;
    } else {
        gc[j] = g;
    }
}

// The weights of classes c .. c + LANES - 1.
fn class_weights(c: u32) -> V {
    if (WEIGHTED == 1u) {
        return lanes(weight[c], weight[c + 1u], weight[c + 2u], weight[c + 3u]);
    }
    return V(1.0);
}

fn row_contiguous(lid: u32, r: u32, gscale: f32) -> f32 {
    let lane = lid % TPR;
    let st = classify(r);
    let status = st.x;
    let y = st.y;
    let units = P.classes / LANES;
    let base = r * units;
    let live = status == 3u;
    if (status == 2u) {
        flag[0] = 1u;
    }

    // Read 1: the running max (of each access's LANES values) and sum of exp(x - max).
    var m = -3.0e38;
    var s = 0.0;
    if (live) {
        for (var j = lane; j < units; j = j + TPR) {
            let v = xc[base + j];
            let mv = hmax(v);
            if (mv > m) {
                s = s * exp(m - mv);
                m = mv;
            }
            s = s + hsum(exp(v - m));
        }
    }
    let mx = seg_max(lid, m);
    let sum = seg_sum(lid, s * exp(m - mx));
    let lse = mx + log(sum);

    // Read 2: the gradient, as in `row`.
    var wy = 0.0;
    if (live) {
        wy = class_weight(y);
    }
    let cy = (1.0 - P.ls) * wy * gscale;
    let cs = P.ls_c * gscale;
    var sm = 0.0;
    if (live) {
        for (var j = lane; j < units; j = j + TPR) {
            let v = xc[base + j];
            let p = exp(v - lse);
            let wc = class_weights(j * LANES);
            var g = cy * p + cs * (p * P.wsum - wc);
            if (y / LANES == j) {
                g = g - cy * unit_lane(y % LANES);
            }
            put_grad_c(base + j, g);
            sm = sm + hsum(wc * (lse - v));
        }
    } else if (status != 0u) {
        for (var j = lane; j < units; j = j + TPR) {
            put_grad_c(base + j, V(0.0));
        }
    }
    var smoothed = 0.0;
    if (SMOOTH == 1u) {
        smoothed = seg_sum(lid, sm);
    }
    if (live) {
        let xy = lane_of(xc[base + y / LANES], y % LANES);
        return (1.0 - P.ls) * wy * (lse - xy) + P.ls_c * smoothed;
    }
    if (status == 2u) {
        return bitcast<f32>(P.nan_bits);
    }
    return 0.0;
}

// ---------------------------------------------------------------------------------------------
// Spatial logits `[N, C, K]` with K a multiple of 4 (the host composes TPR 1, LANES 4 and binds
// x, the gradient and the labels here): a thread owns four neighbouring positions, read four at
// a time (one 16-byte access per class, coalesced across threads), with no branch on the data.
// Up to the host's limit of classes (CC = C, loops unrolled by src/kernel.rs) the logits are
// held: read once, exponentiated once (quad). Beyond it, one online sweep for the maximum and
// the exp-sum, one writing the gradient, over a thread's QPT accesses class by class
// (quads_swept).
@group(0) @binding(13) var<storage, read> labels4: array<VI>;

// A workgroup owns QPT TB accesses of one sample (its first TB threads; TB < WG only with the
// CPU kernels' swept blocks, for more workgroups: losses/mod.rs block_threads; blocks never
// straddle samples, so the sample is one division per thread: lavapipe divides lane by lane):
// sample n and the first access j0.
// A thread's QPT accesses are common.wgsl's strip_at with runs of QW threads (lavapipe, two
// classes: 7.2-7.7 -> 6.9-7.0 ms against each thread's accesses a workgroup apart).
fn block_at(g: u32) -> vec2<u32> {
    let blocks = (P.inner / LANES + QPT * TB - 1u) / (QPT * TB);
    let n = g / blocks;
    return vec2<u32>(n, (g - n * blocks) * QPT * TB);
}

// What the losses and gradients of positions n K + 4 j .. n K + 4 j + 3 take from their labels.
struct Targets {
    // The label where live, else 0.
    yc: VU,
    // A valid, non-ignored label.
    live: VB,
    // A label out of range (flag[0] set).
    bad: VB,
    // The label's class weight where live, else 0.
    wy: V,
    // The gradient's coefficients: cy p + cs (p wsum - w_c) - [c == y] cy.
    cy: V,
    cs: V,
}

fn targets(n: u32, j: u32, gscale: f32) -> Targets {
    let r = n * P.inner + j * LANES;
    let y = labels4[(P.label_base + r) / LANES];
    let C = P.classes;
    var ignored = VB(false);
    if (IGNORE == 1u) {
        ignored = y == VI(P.ignore);
    }
    // A negative label is a huge unsigned one: out of range unless ignored.
    let yu = bitcast<VU>(y);
    let bad = (yu >= VU(C)) & !ignored;
    let live = !(ignored | bad);
    if (any(bad)) {
        flag[0] = 1u;
    }
    let yc = select(VU(0u), yu, live);
    var wy = V(1.0);
    if (WEIGHTED == 1u) {
        wy = lanes(weight[ulane_of(yc, 0u)], weight[ulane_of(yc, 1u)], weight[ulane_of(yc, 2u)],
                   weight[ulane_of(yc, 3u)]);
    }
    wy = select(V(0.0), wy, live);
    let cy = (1.0 - P.ls) * wy * gscale;
    let cs = select(V(0.0), V(P.ls_c * gscale), live);
    return Targets(yc, live, bad, wy, cy, cs);
}

// The losses `l` of the positions as reported: 0 where ignored, NaN where the label is out of
// range.
fn reported(t: Targets, l: V) -> V {
    return select(select(V(0.0), l, t.live), V(bitcast<f32>(P.nan_bits)), t.bad);
}

// The losses of positions n K + 4 j .. n K + 4 j + 3 (j < K / 4) with C = CC classes, few enough
// to hold: each logit read once, one exponential each; writes their gradient. (Written over
// the LANES aliases so that the one-lane variants compile it too; only LANES 4 runs it.)
fn quad(n: u32, j: u32, gscale: f32) -> V {
    let t = targets(n, j, gscale);
    let K4 = P.inner / LANES;
    let base = n * P.classes * K4 + j;
    var xs: array<V, CN>;
    var m = xc[base];
    xs[0] = m;
    for (var c = 1u; c < CC; c = c + 1u) { // #unroll
        let v = xc[base + c * K4];
        xs[c] = v;
        m = max(m, v);
    }
    // e_c = exp(x_c - m) replaces x_c; dy = m - x_y; sd = sum_c w_c (m - x_c).
    var s = V(0.0);
    var dy = V(0.0);
    var sd = V(0.0);
    for (var c = 0u; c < CC; c = c + 1u) { // #unroll
        let d = m - xs[c];
        let e = exp(-d);
        xs[c] = e;
        s = s + e;
        dy = select(dy, d, t.yc == VU(c));
        sd = sd + class_weight(c) * d;
    }
    let ls = log(s); // lse - m
    let rs = 1.0 / s;
    for (var c = 0u; c < CC; c = c + 1u) { // #unroll
        let p = xs[c] * rs;
        let g = t.cy * p + t.cs * (p * P.wsum - class_weight(c))
            - select(V(0.0), t.cy, t.yc == VU(c));
        put_grad_c(base + c * K4, select(V(0.0), g, t.live));
    }
    var l = (1.0 - P.ls) * t.wy * (ls + dy);
    if (SMOOTH == 1u) {
        // sum_c w_c (lse - x_c), as two sums of non-negative terms.
        l = l + P.ls_c * (ls * P.wsum + sd);
    }
    return reported(t, l);
}

// Beyond CC classes: one online sweep for the maximum and the exp-sum, one writing the gradient,
// over the QPT accesses of a thread at once (the tile of sample n from access j0): class by
// class, each class's QPT accesses in a row. A SIMD group then reads QPT runs of QW accesses of
// a plane before the next plane; with the classes of one access at a time, a power-of-two plane
// stride made C interleaved streams that a CPU's prefetchers and cache sets do not keep.
// The losses of each access (zero past K / 4).
fn quads_swept(n: u32, j0: u32, lid: u32, gscale: f32) -> array<V, QPT> {
    let C = P.classes;
    let K4 = P.inner / LANES;
    var ok: array<bool, QPT>;
    var base: array<u32, QPT>;
    var t: array<Targets, QPT>;
    var m: array<V, QPT>;
    var s: array<V, QPT>;
    var xy: array<V, QPT>;
    for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
        let j = strip_at(j0, q, lid, QPT, QW);
        ok[q] = j < K4;
        // An access past K reads (and never writes) the sample's last one.
        let jc = min(j, K4 - 1u);
        base[q] = n * C * K4 + jc;
        t[q] = targets(n, jc, gscale);
        m[q] = xc[base[q]];
        s[q] = V(1.0);
        xy[q] = select(V(0.0), m[q], t[q].yc == VU(0u));
    }
    // m = running maximum, s = sum exp(x - m): one exponential per element (fold_max).
    for (var c = 1u; c < C; c = c + 1u) {
        for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
            let v = xc[base[q] + c * K4];
            // Through a local: naga 30's SPIR-V writer panics ("Expression is not cached") on
            // a pointer to the array element.
            var mq = m[q];
            let f = fold_max(&mq, v);
            m[q] = mq;
            s[q] = s[q] * f.r + f.q;
            xy[q] = select(xy[q], v, t[q].yc == VU(c));
        }
    }
    var lse: array<V, QPT>;
    var sm: array<V, QPT>;
    for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
        lse[q] = m[q] + log(s[q]);
        sm[q] = V(0.0);
    }
    // Last class first: the planes read last are the ones still cached.
    for (var cr = 0u; cr < C; cr = cr + 1u) {
        let c = C - 1u - cr;
        let wc = class_weight(c);
        for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
            let i = base[q] + c * K4;
            let v = xc[i];
            let p = exp(v - lse[q]);
            let g = t[q].cy * p + t[q].cs * (p * P.wsum - wc)
                - select(V(0.0), t[q].cy, t[q].yc == VU(c));
            if (ok[q]) {
                put_grad_c(i, select(V(0.0), g, t[q].live));
            }
            sm[q] = sm[q] + wc * (lse[q] - v);
        }
    }
    var out: array<V, QPT>;
    for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
        var l = (1.0 - P.ls) * t[q].wy * (lse[q] - xy[q]);
        if (SMOOTH == 1u) {
            l = l + P.ls_c * sm[q];
        }
        out[q] = select(V(0.0), reported(t[q], l), ok[q]);
    }
    return out;
}

// rows_reduce over `[N, C, K]`, K a multiple of 4: four positions per thread (quad), blocks
// of 4 WG positions within a sample.
@compute @workgroup_size(256)
fn rows_reduce_q(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let at = block_at(g);
    if (at.x * P.inner >= P.rows) {
        return;
    }
    var gscale = P.grad_scale;
    if ((P.flags & 4u) != 0u) {
        gscale = P.grad_scale / wtot[0];
    }
    var mine = 0.0;
    if (lid >= TB) {
        // Past the block's threads: nothing.
    } else if (CC == 0u) {
        // A run of threads wholly past the sample skips the sweeps (lavapipe then skips them for
        // its SIMD group).
        if (strip_at(at.y, 0u, lid, QPT, QW) < P.inner / LANES) {
            let l = quads_swept(at.x, at.y, lid, gscale);
            for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
                mine = mine + hsum(l[q]);
            }
        }
    } else {
        for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
            let j = strip_at(at.y, q, lid, QPT, QW);
            if (j < P.inner / LANES) {
                mine = mine + hsum(quad(at.x, j, gscale));
            }
        }
    }
    let s = wg_sum(lid, mine);
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

// rows_none over `[N, C, K]`, K a multiple of 4 (quad).
@compute @workgroup_size(256)
fn rows_none_q(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = block_at(group_index(wid, nwg));
    if (at.x * P.inner >= P.rows || lid >= TB) {
        return;
    }
    var swept: array<V, QPT>;
    if (CC == 0u) {
        swept = quads_swept(at.x, at.y, lid, P.grad_scale);
    }
    for (var q = 0u; q < QPT; q = q + 1u) { // #unroll
        let j = strip_at(at.y, q, lid, QPT, QW);
        if (j < P.inner / LANES) {
            var l: V;
            if (CC == 0u) {
                l = swept[q];
            } else {
                l = quad(at.x, j, P.grad_scale);
            }
            let e = P.label_base + at.x * P.inner + j * LANES;
            for (var i = 0u; i < LANES; i = i + 1u) {
                elem_loss[e + i] = lane_of(l, i);
            }
        }
    }
}

// W: the summed class weight of the valid, non-ignored targets (tiles of ITEMS * WG labels).
@compute @workgroup_size(256)
fn weight_sum(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g * ITEMS * WG >= P.rows) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < ITEMS; k = k + 1u) {
        let st = classify((g * ITEMS + k) * WG + lid);
        if (st.x == 3u) {
            acc = acc + class_weight(st.y);
        }
    }
    let s = wg_sum(lid, acc);
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

// weight_sum over a window of whole accesses of four labels (the host binds `labels4`; tiles of
// ITEMS * WG accesses).
@compute @workgroup_size(256)
fn weight_sum_q(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let units = P.rows / LANES;
    if (g * ITEMS * WG >= units) {
        return;
    }
    var acc = V(0.0);
    for (var k = 0u; k < ITEMS; k = k + 1u) {
        let j = (g * ITEMS + k) * WG + lid;
        if (j < units) {
            let y = labels4[j];
            var ignored = VB(false);
            if (IGNORE == 1u) {
                ignored = y == VI(P.ignore);
            }
            let yu = bitcast<VU>(y);
            let valid = (yu < VU(P.classes)) & !ignored;
            let yc = select(VU(0u), yu, valid);
            var w = V(1.0);
            if (WEIGHTED == 1u) {
                w = lanes(weight[ulane_of(yc, 0u)], weight[ulane_of(yc, 1u)],
                          weight[ulane_of(yc, 2u)], weight[ulane_of(yc, 3u)]);
            }
            acc = acc + select(V(0.0), w, valid);
        }
    }
    let s = wg_sum(lid, hsum(acc));
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

// mean / sum: the gradient, and one partial loss sum per workgroup.
@compute @workgroup_size(256)
fn rows_reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    var gscale = P.grad_scale;
    if ((P.flags & 4u) != 0u) {
        gscale = P.grad_scale / wtot[0];
    }
    let l = row(lid, g * rpw + lid / TPR, gscale);
    var mine = 0.0;
    if (lid % TPR == 0u) {
        mine = l;
    }
    let s = wg_sum(lid, mine);
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

// none: the loss of every position and the gradient.
@compute @workgroup_size(256)
fn rows_none(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    let r = g * rpw + lid / TPR;
    let l = row(lid, r, P.grad_scale);
    if (lid % TPR == 0u && r < P.rows) {
        elem_loss[P.label_base + r] = l;
    }
}

// rows_reduce and rows_none over rows of contiguous classes (row_contiguous).
@compute @workgroup_size(256)
fn rows_reduce_c(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    var gscale = P.grad_scale;
    if ((P.flags & 4u) != 0u) {
        gscale = P.grad_scale / wtot[0];
    }
    let l = row_contiguous(lid, g * rpw + lid / TPR, gscale);
    var mine = 0.0;
    if (lid % TPR == 0u) {
        mine = l;
    }
    let s = wg_sum(lid, mine);
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

@compute @workgroup_size(256)
fn rows_none_c(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    let r = g * rpw + lid / TPR;
    let l = row_contiguous(lid, r, P.grad_scale);
    if (lid % TPR == 0u && r < P.rows) {
        elem_loss[P.label_base + r] = l;
    }
}

// loss = total / W (mean; 0 / 0 = NaN when every target is ignored) or total (sum).
@compute @workgroup_size(1)
fn finalize() {
    let t = ltot[0];
    if ((P.flags & 4u) != 0u) {
        let w = wtot[0];
        if (w == 0.0 && t == 0.0) {
            loss_out[0] = bitcast<f32>(P.nan_bits);
        } else {
            loss_out[0] = t / w;
        }
    } else {
        loss_out[0] = t;
    }
}
