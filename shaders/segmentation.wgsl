// JaccardLoss and DiceLoss. Composed with:
//   MULTI     0: p = sigmoid(x) per element; 1: p = softmax of x over the channels (dim 1)
//   PER_CLASS 0: one global ratio; 1: one ratio per channel, loss = 1 - mean of the ratios
//   KIND      0: Jaccard r = I / (S - I + eps); 1: Dice r = (2 I + smooth) / max(S + smooth, eps)
//
// The input is seen as [samples, C, inner] (inner = product of the spatial sizes); a thread
// owns one pixel (sample, spatial position) and loops over its C channels, which lie `inner`
// elements apart. The binary global case has entry points of its own (flat_stats, flat_grad):
// every element is a pixel, LANES of them per access (kernel.rs LANES_1 / LANES_4).
// A workgroup owns a tile of TILE = ITEMS * WG consecutive pixels.
//
// Passes and traffic (E = elements, G = groups = C with per_class, else 1, T = tiles):
//   stats:    reads x and t once (1E + 1E) and writes 2G partials per tile. multiclass
//             global: one online-softmax sweep per pixel gives I_pixel = sum_c e_c t_c / sum_c e_c
//             and S_pixel = 1 + sum_c t_c. multiclass per_class: a first sweep over x for the
//             pixel's max and exp-sum (the same C values are read again right after, from cache).
//   reduce:   reduce_rows over the [2G][T] partials (tiny).
//   finalize: one invocation: the loss and the 2G gradient coefficients
//             dL/dp = coef[g] * t + coef[G + g] (upstream scale and 1/G folded in).
//   grad:     binary: reads x and t once, writes the gradient once (reads it too with
//             accumulate). multiclass: an online sweep over the pixel's channels gives
//             dot = sum_c p_c g_c, then a second sweep over the same (cached) values writes
//             dx_c = p_c (g_c - dot). Over four pixels per access through a softmax, the CPU
//             kernels sweep a thread's accesses class by class (swept_grad); otherwise the
//             global ratio's and binary per-class gradients go plane by plane (plane_grad), per
//             class over a softmax pixel by pixel (multi_grad).
// DRAM traffic is thus about 2 reads (x, t) for stats and 2 reads + 1 write for grad.

const ITEMS: u32 = 16u;

struct Params {
    pixels: u32,     // pixels of this window (samples * inner)
    inner: u32,      // product of the spatial sizes
    channels: u32,   // C
    tile_base: u32,  // index of the window's first tile among all tiles
    tiles: u32,      // tiles of the whole tensor (row length of `partials`)
    groups: u32,     // G
    flags: u32,      // bit 0: accumulate (the kernels use the constant ACCUM: kernel.rs)
    tps: u32,        // four-pixel paths: tiles per sample
    grad_scale: f32, // upstream scale
    eps: f32,
    smooth_: f32,
    gtps: u32,       // swept_stats, swept_grad: workgroups per sample
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<In>;
@group(0) @binding(2) var<storage, read> t: array<In>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read> totals: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> coef: array<f32>;

fn put_grad(i: u32, g: f32) {
    if (ACCUM == 1u) {
        grad[i] = grad[i] + g;
    } else {
        grad[i] = g;
    }
}

// The element index of channel 0 of pixel q; channel c is `c * inner` further.
fn first_elem(q: u32) -> u32 {
    let n = q / P.inner;
    let k = q - n * P.inner;
    return n * P.channels * P.inner + k;
}

@compute @workgroup_size(256)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g * ITEMS * WG >= P.pixels) {
        return;
    }
    let col = P.tile_base + g;
    let C = P.channels;
    if (PER_CLASS == 0u) {
        var acc_i = 0.0;
        var acc_s = 0.0;
        for (var it = 0u; it < ITEMS; it = it + 1u) {
            let q = (g * ITEMS + it) * WG + lid;
            if (q < P.pixels) {
                // Multiclass (the binary global case is flat_stats).
                // Online softmax: m = running max, s = sum exp(x - m), v = sum exp(x - m) t.
                let e0 = first_elem(q);
                var m = f32(x[e0]);
                var s = 1.0;
                var v = f32(t[e0]);
                var ts = f32(t[e0]);
                for (var c = 1u; c < C; c = c + 1u) {
                    let e = e0 + c * P.inner;
                    let xv = f32(x[e]);
                    let tv = f32(t[e]);
                    if (xv > m) {
                        let r = exp(m - xv);
                        s = s * r + 1.0;
                        v = v * r + tv;
                        m = xv;
                    } else {
                        let z = exp(xv - m);
                        s = s + z;
                        v = v + z * tv;
                    }
                    ts = ts + tv;
                }
                acc_i = acc_i + v / s;
                acc_s = acc_s + 1.0 + ts;
            }
        }
        let sums = wg_sum2(lid, vec2<f32>(acc_i, acc_s));
        let si = sums.x;
        let ss = sums.y;
        if (lid == 0u) {
            partials[col] = si;
            partials[P.tiles + col] = ss;
        }
        return;
    }
    // per_class: the pixel's softmax max and exp-sum first, then one channel at a time.
    var mx: array<f32, ITEMS>;
    var sm: array<f32, ITEMS>;
    for (var it = 0u; it < ITEMS; it = it + 1u) {
        mx[it] = 0.0;
        sm[it] = 1.0;
        let q = (g * ITEMS + it) * WG + lid;
        if (MULTI == 1u && q < P.pixels) {
            let e0 = first_elem(q);
            var m = f32(x[e0]);
            var s = 1.0;
            for (var c = 1u; c < C; c = c + 1u) {
                let xv = f32(x[e0 + c * P.inner]);
                if (xv > m) {
                    s = s * exp(m - xv) + 1.0;
                    m = xv;
                } else {
                    s = s + exp(xv - m);
                }
            }
            mx[it] = m;
            sm[it] = s;
        }
    }
    for (var c = 0u; c < C; c = c + 1u) {
        var acc_i = 0.0;
        var acc_s = 0.0;
        for (var it = 0u; it < ITEMS; it = it + 1u) {
            let q = (g * ITEMS + it) * WG + lid;
            if (q < P.pixels) {
                let e = first_elem(q) + c * P.inner;
                var p: f32;
                if (MULTI == 1u) {
                    p = exp(f32(x[e]) - mx[it]) / sm[it];
                } else {
                    p = lane_of(sigmoid(V(f32(x[e]))), 0u);
                }
                let tv = f32(t[e]);
                acc_i = acc_i + p * tv;
                acc_s = acc_s + p + tv;
            }
        }
        let sums = wg_sum2(lid, vec2<f32>(acc_i, acc_s));
        let si = sums.x;
        let ss = sums.y;
        if (lid == 0u) {
            partials[c * P.tiles + col] = si;
            partials[(P.groups + c) * P.tiles + col] = ss;
        }
    }
}

// The loss, and dL/dI_g, dL/dS_g of every group (times the upstream scale).
@compute @workgroup_size(1)
fn finalize() {
    let G = P.groups;
    let inv_g = 1.0 / f32(G);
    var total = 0.0;
    for (var g = 0u; g < G; g = g + 1u) {
        let i = totals[g];
        let s = totals[G + g];
        var r: f32;
        var dr_di: f32;
        var dr_ds: f32;
        if (KIND == 0u) {
            let d = s - i + P.eps;
            r = i / d;
            dr_di = (d + i) / d / d;
            dr_ds = -i / d / d;
            if (d == 0.0) {
                // eps = 0 and I = S = 0 (a class absent from both): 0/0 is 0, zero gradient.
                r = 0.0;
                dr_di = 0.0;
                dr_ds = 0.0;
            }
        } else {
            let num = 2.0 * i + P.smooth_;
            let den = max(s + P.smooth_, P.eps);
            r = num / den;
            dr_di = 2.0 / den;
            dr_ds = 0.0;
            if (s + P.smooth_ >= P.eps) {
                dr_ds = -num / den / den;
            }
            if (den == 0.0) {
                // eps = smooth = 0 and S = 0: 0/0 is 0, zero gradient (as Jaccard).
                r = 0.0;
                dr_di = 0.0;
                dr_ds = 0.0;
            }
        }
        total = total + r;
        coef[g] = -dr_di * inv_g * P.grad_scale;
        coef[G + g] = -dr_ds * inv_g * P.grad_scale;
    }
    loss_out[0] = 1.0 - total * inv_g;
}

// dL/dp of channel c at target value tv.
fn dl_dp(c: u32, tv: f32) -> f32 {
    var g = 0u;
    if (PER_CLASS == 1u) {
        g = c;
    }
    return coef[g] * tv + coef[P.groups + g];
}

@compute @workgroup_size(256)
fn grad_pass(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let C = P.channels;
    for (var it = 0u; it < ITEMS; it = it + 1u) {
        let q = (g * ITEMS + it) * WG + lid;
        if (q >= P.pixels) {
            continue;
        }
        let e0 = first_elem(q);
        if (MULTI == 1u) {
            // Online: m = running max, s = sum exp(x - m), u = sum exp(x - m) dL/dp.
            var m = f32(x[e0]);
            var s = 1.0;
            var u = dl_dp(0u, f32(t[e0]));
            for (var c = 1u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                let xv = f32(x[e]);
                let gv = dl_dp(c, f32(t[e]));
                if (xv > m) {
                    let r = exp(m - xv);
                    s = s * r + 1.0;
                    u = u * r + gv;
                    m = xv;
                } else {
                    let z = exp(xv - m);
                    s = s + z;
                    u = u + z * gv;
                }
            }
            let dot = u / s;
            for (var c = 0u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                let p = exp(f32(x[e]) - m) / s;
                put_grad(e, p * (dl_dp(c, f32(t[e])) - dot));
            }
        } else {
            // Binary per_class (the binary global case is flat_grad).
            for (var c = 0u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                let xv = f32(x[e]);
                put_grad(e, dl_dp(c, f32(t[e])) * lane_of(dsigmoid(V(xv)), 0u));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary with one global ratio: the host flattened the tensor (pixel = element) and binds it
// here, LANES elements per access; the four-lane variant only where the window's length is a
// multiple of 4. Tiles as above (ITEMS * WG elements).
@group(0) @binding(8) var<storage, read> x_flat: array<InV>;
@group(0) @binding(9) var<storage, read> t_flat: array<InV>;
@group(0) @binding(10) var<storage, read_write> g_flat: array<V>;

const FLAT_UNITS: u32 = ITEMS / LANES;

@compute @workgroup_size(256)
fn flat_stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let units = P.pixels / LANES;
    if (g * FLAT_UNITS * WG >= units) {
        return;
    }
    var acc = vec2<f32>(0.0);
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        let j = (g * FLAT_UNITS + k) * WG + lid;
        if (j < units) {
            let p = sigmoid(V(x_flat[j]));
            let y = V(t_flat[j]);
            acc = acc + vec2<f32>(hsum(p * y), hsum(p + y));
        }
    }
    let sums = wg_sum2(lid, acc);
    if (lid == 0u) {
        let col = P.tile_base + g;
        partials[col] = sums.x;
        partials[P.tiles + col] = sums.y;
    }
}

@compute @workgroup_size(256)
fn flat_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let units = P.pixels / LANES;
    let a = coef[0];
    let b = coef[P.groups];
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        let j = (g * FLAT_UNITS + k) * WG + lid;
        if (j < units) {
            let d = (a * V(t_flat[j]) + b) * dsigmoid(V(x_flat[j]));
            if (ACCUM == 1u) {
                g_flat[j] = g_flat[j] + d;
            } else {
                g_flat[j] = d;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multiclass, or per class, over spatial sizes that are a multiple of LANES: LANES neighbouring
// pixels per access (x_flat, t_flat, g_flat hold whole samples here), the lanes' softmaxes side
// by side without a branch on the data. The statistics take one online softmax sweep (a running
// maximum); the later sweeps reread the same few KiB from cache. The same sums and
// gradient as `stats` and `grad_pass`, up to rounding.

// Per access of LANES pixels (window-local index qg), written by multi_stats for the gradient:
// pix[2 qg] = the pixels' log-sum-exp, pix[2 qg + 1] = sum_c p_c t_c (the global ratio only).
// With them the gradient needs no maximum sweep, and the global ratio's one sweep. Not with
// LOCAL (a few held channels): multi_grad takes the softmax from the channels again.
@group(0) @binding(11) var<storage, read_write> pix: array<V>;

// Per-class statistics: a batch of channels' subgroup sums (subgroup variants only).
var<workgroup> chan: array<vec2<f32>, 256>;

// Tiles never straddle samples here: P.tps tiles per sample, so a workgroup finds its sample
// with one division (lavapipe divides lane by lane; one per access was a large part of the
// time). Access k of thread lid: sample n, access jl = j0 + k WG + lid within it (valid while
// jl < per), window-local index qg = n per + jl, channel 0 at e0 = n C per + jl, channel c at
// e0 + c per.
struct At {
    n: u32,
    j0: u32,
}

fn tile_at(g: u32) -> At {
    let n = g / P.tps;
    return At(n, (g - n * P.tps) * FLAT_UNITS * WG);
}

// dL/dp of channel c at target values tv.
fn dl_dp_v(c: u32, tv: V) -> V {
    var g = 0u;
    if (PER_CLASS == 1u) {
        g = c;
    }
    return coef[g] * tv + coef[P.groups + g];
}

fn put_flat(e: u32, d: V) {
    if (ACCUM == 1u) {
        g_flat[e] = g_flat[e] + d;
    } else {
        g_flat[e] = d;
    }
}

// The softmax over the CC held channels of an access (channel 0 at e0, channel c at
// e0 + c stride): the probabilities, and the maximum m and exp-sum s (log-sum-exp m + log s).
struct Held {
    p: array<V, CN>,
    m: V,
    s: V,
}

fn held_softmax(e0: u32, stride: u32) -> Held {
    var h: Held;
    h.m = V(x_flat[e0]);
    h.p[0] = h.m;
    for (var c = 1u; c < CC; c = c + 1u) { // #unroll
        let xv = V(x_flat[e0 + c * stride]);
        h.p[c] = xv;
        h.m = max(h.m, xv);
    }
    h.s = V(0.0);
    for (var c = 0u; c < CC; c = c + 1u) { // #unroll
        let b = exp(h.p[c] - h.m);
        h.p[c] = b;
        h.s = h.s + b;
    }
    let r = 1.0 / h.s;
    for (var c = 0u; c < CC; c = c + 1u) { // #unroll
        h.p[c] = h.p[c] * r;
    }
    return h;
}

// Per class, one thread's (sum p t, sum p + t) of channel c over its accesses (access k at
// strip_at(j0, k, lid, FLAT_UNITS, QW) while under `stride`, channel 0 at first[k]; softmax
// max and 1 / exp-sum mx[k], rs[k]). A tile's accesses run in strips of QW threads (common.wgsl
// strip_at): lavapipe's per-class gradient at 19 classes 16 -> 11-12.5 ms against accesses a
// workgroup apart.
fn channel_sums(c: u32, j0: u32, lid: u32, stride: u32, first: array<u32, FLAT_UNITS>,
                mx: array<V, FLAT_UNITS>, rs: array<V, FLAT_UNITS>) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        if (strip_at(j0, k, lid, FLAT_UNITS, QW) < stride) {
            let e = first[k] + c * stride;
            let xv = V(x_flat[e]);
            var p: V;
            if (MULTI == 1u) {
                p = exp(xv - mx[k]) * rs[k];
            } else {
                p = sigmoid(xv);
            }
            let tv = V(t_flat[e]);
            acc = acc + vec2<f32>(hsum(p * tv), hsum(p + tv));
        }
    }
    return acc;
}

@compute @workgroup_size(256)
fn multi_stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let at = tile_at(g);
    if (at.n * P.inner >= P.pixels) {
        return;
    }
    let col = P.tile_base + g;
    let stride = P.inner / LANES;
    let C = P.channels;
    let q0 = at.n * stride;
    let e00 = at.n * C * stride;
    if (PER_CLASS == 0u) {
        // One global ratio (multiclass): I_pixel = sum_c e_c t_c / sum_c e_c, S_pixel = 1 + sum_c t_c.
        var acc = vec2<f32>(0.0);
        for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
            let jl = strip_at(at.j0, k, lid, FLAT_UNITS, QW);
            if (jl < stride) {
                let qg = q0 + jl;
                let e0 = e00 + jl;
                // m = the maximum, s = sum exp(x - m), v = sum exp(x - m) t, ts = sum t.
                var m: V;
                var s: V;
                var v: V;
                var ts: V;
                if (CC != 0u) {
                    // C = CC channels, few enough to hold: one read and one exponential each.
                    var xs: array<V, CN>;
                    m = V(x_flat[e0]);
                    xs[0] = m;
                    for (var c = 1u; c < CC; c = c + 1u) { // #unroll
                        let xv = V(x_flat[e0 + c * stride]);
                        xs[c] = xv;
                        m = max(m, xv);
                    }
                    s = V(0.0);
                    v = V(0.0);
                    ts = V(0.0);
                    for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                        let b = exp(xs[c] - m);
                        let tv = V(t_flat[e0 + c * stride]);
                        s = s + b;
                        v = v + b * tv;
                        ts = ts + tv;
                    }
                } else {
                    // One online sweep (a running maximum), one exponential per element
                    // (fold_max).
                    m = V(x_flat[e0]);
                    s = V(1.0);
                    v = V(t_flat[e0]);
                    ts = v;
                    for (var c = 1u; c < C; c = c + 1u) {
                        let e = e0 + c * stride;
                        let xv = V(x_flat[e]);
                        let tv = V(t_flat[e]);
                        let f = fold_max(&m, xv);
                        s = s * f.r + f.q;
                        v = v * f.r + f.q * tv;
                        ts = ts + tv;
                    }
                }
                let pt = v / s;
                if (LOCAL == 0u) {
                    pix[2u * qg] = m + log(s);
                    pix[2u * qg + 1u] = pt;
                }
                acc = acc + vec2<f32>(hsum(pt), hsum(1.0 + ts));
            }
        }
        let sums = wg_sum2(lid, acc);
        if (lid == 0u) {
            partials[col] = sums.x;
            partials[P.tiles + col] = sums.y;
        }
        return;
    }
    // Per class. With C = CC channels, few enough to hold, each access's pixels are finished
    // at once (one read and one exponential per element) and the thread keeps its per-channel
    // sums (ai, ap). Otherwise each pixel's softmax maximum and 1 / exp-sum first, then one
    // channel at a time.
    var mx: array<V, FLAT_UNITS>;
    var rs: array<V, FLAT_UNITS>;
    var first: array<u32, FLAT_UNITS>; // e0 of each access
    var ai: array<f32, CN>; // sum p t of channel c (CC != 0)
    var ap: array<f32, CN>; // sum p + t of channel c (CC != 0)
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        mx[k] = V(0.0);
        rs[k] = V(1.0);
        let jl = strip_at(at.j0, k, lid, FLAT_UNITS, QW);
        let qg = q0 + jl;
        first[k] = e00 + jl;
        if (CC != 0u && jl < stride) {
            let e0 = first[k];
            var xs: array<V, CN>;
            if (MULTI == 1u) {
                let h = held_softmax(e0, stride);
                xs = h.p;
                if (LOCAL == 0u) {
                    pix[2u * qg] = h.m + log(h.s);
                }
            } else {
                for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                    xs[c] = sigmoid(V(x_flat[e0 + c * stride]));
                }
            }
            for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                let p = xs[c];
                let tv = V(t_flat[e0 + c * stride]);
                ai[c] = ai[c] + hsum(p * tv);
                ap[c] = ap[c] + hsum(p + tv);
            }
        } else if (MULTI == 1u && jl < stride) {
            // One online sweep, one exponential per element (as in the global ratio's).
            let e0 = first[k];
            var m = V(x_flat[e0]);
            var s = V(1.0);
            for (var c = 1u; c < C; c = c + 1u) {
                let f = fold_max(&m, V(x_flat[e0 + c * stride]));
                s = s * f.r + f.q;
            }
            mx[k] = m;
            rs[k] = 1.0 / s;
            pix[2u * qg] = m + log(s);
        }
    }
    if (TPART == 1u) {
        // Each thread's sums are partials of their own (WG columns per tile, rows of P.tiles WG
        // columns), reduced by reduce_rows like the others: no barrier or subgroup sum here.
        let row = P.tiles * WG;
        let colt = col * WG + lid;
        for (var c = 0u; c < CC; c = c + 1u) { // #unroll
            partials[c * row + colt] = ai[c];
            partials[(P.groups + c) * row + colt] = ap[c];
        }
        for (var c = 0u; CC == 0u && c < C; c = c + 1u) {
            let acc = channel_sums(c, at.j0, lid, stride, first, mx, rs);
            partials[c * row + colt] = acc.x;
            partials[(P.groups + c) * row + colt] = acc.y;
        }
        return;
    }
    // With subgroups, a batch of SG channels shares one pair of barriers: each channel's
    // subgroup sums wait in workgroup memory (WG / SG of them), then SG threads add up one
    // channel each, in a fixed order. Without, a workgroup sum per channel.
    let parts = WG / max(SG, 1u);
    let batch = max(SG, 1u);
    for (var c0 = 0u; c0 < C; c0 = c0 + batch) {
        for (var cc = 0u; cc < batch; cc = cc + 1u) {
            let c = c0 + cc;
            if (c >= C) {
                break;
            }
            var acc: vec2<f32>;
            if (CC != 0u) {
                acc = vec2<f32>(ai[c], ap[c]);
            } else {
                acc = channel_sums(c, at.j0, lid, stride, first, mx, rs);
            }
            if (SG != 0u) {
                let s = vec2<f32>(subgroup_sum(acc.x), subgroup_sum(acc.y));
                if (lid % batch == 0u) {
                    chan[cc * parts + lid / batch] = s;
                }
            } else {
                let sums = wg_sum2(lid, acc);
                if (lid == 0u) {
                    partials[c * P.tiles + col] = sums.x;
                    partials[(P.groups + c) * P.tiles + col] = sums.y;
                }
            }
        }
        if (SG != 0u) {
            workgroupBarrier();
            let c = c0 + lid;
            if (lid < batch && c < C) {
                var t = vec2<f32>(0.0);
                for (var j = 0u; j < parts; j = j + 1u) {
                    t = t + chan[lid * parts + j];
                }
                partials[c * P.tiles + col] = t.x;
                partials[(P.groups + c) * P.tiles + col] = t.y;
            }
            workgroupBarrier();
        }
    }
}

// Per class over a softmax (MULTI 1, PER_CLASS 1), and the global ratio with LOCAL, pixel by
// pixel.
@compute @workgroup_size(256)
fn multi_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let at = tile_at(g);
    if (at.n * P.inner >= P.pixels) {
        return;
    }
    let stride = P.inner / LANES;
    let C = P.channels;
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        let jl = strip_at(at.j0, k, lid, FLAT_UNITS, QW);
        if (jl >= stride) {
            continue;
        }
        let qg = at.n * stride + jl;
        let e0 = at.n * C * stride + jl;
        // u = sum_c p_c dL/dp_c; dx_c = p_c (dL/dp_c - u).
        if (CC != 0u) {
            // C = CC channels, few enough to hold: one exponential each. The softmax from the
            // pixel's log-sum-exp, or (LOCAL) from its channels' maximum and exp-sum.
            var ps: array<V, CN>;
            if (LOCAL == 1u) {
                ps = held_softmax(e0, stride).p;
            } else {
                let lse = pix[2u * qg];
                for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                    ps[c] = exp(V(x_flat[e0 + c * stride]) - lse);
                }
            }
            // dL/dp held too with LOCAL's few channels (lavapipe, two channels: 7.8-9.1 ->
            // 6.7 ms); with more, read again (held, no faster at 19).
            var u = V(0.0);
            var dls: array<V, CN>;
            for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                let dl = dl_dp_v(c, V(t_flat[e0 + c * stride]));
                if (LOCAL == 1u) {
                    dls[c] = dl;
                }
                u = u + ps[c] * dl;
            }
            for (var c = 0u; c < CC; c = c + 1u) { // #unroll
                let e = e0 + c * stride;
                var dl: V;
                if (LOCAL == 1u) {
                    dl = dls[c];
                } else {
                    dl = dl_dp_v(c, V(t_flat[e]));
                }
                put_flat(e, ps[c] * (dl - u));
            }
            continue;
        }
        let lse = pix[2u * qg];
        var u = V(0.0);
        for (var c = 0u; c < C; c = c + 1u) {
            let e = e0 + c * stride;
            u = u + exp(V(x_flat[e]) - lse) * dl_dp_v(c, V(t_flat[e]));
        }
        // Last channel first: the planes read last are the ones still cached (as in
        // cross_entropy.wgsl's second sweep).
        for (var cr = 0u; cr < C; cr = cr + 1u) {
            let c = C - 1u - cr;
            let e = e0 + c * stride;
            let p = exp(V(x_flat[e]) - lse);
            put_flat(e, p * (dl_dp_v(c, V(t_flat[e])) - u));
        }
    }
}

// The gradient of the global ratio (multiclass) and of binary per-class ratios over the
// four-pixel path, element by element in the tensor's own order: a workgroup owns a tile of one
// (sample, channel) plane, so its accesses are contiguous. (multi_grad's per-pixel sweep reads
// the C planes of a pixel at once: planes of a power-of-two size put those accesses in one
// cache set of a CPU, whose caches they thrash.) The global ratio: dx_c = a p_c (t_c - pt),
// p_c = exp(x_c - lse), with lse and pt from pix; binary: dx_c = dL/dp_c sigmoid'(x_c).
// (Per class over a softmax, dx_c = p_c (dL/dp_c - u) needs u = sum_c p_c dL/dp_c first: a
// sweep for u and then this pass measured no faster on lavapipe than multi_grad's, and slower
// at two classes, so multi_grad keeps it.)
@compute @workgroup_size(256)
fn plane_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let plane = g / P.tps;
    let j0 = (g - plane * P.tps) * FLAT_UNITS * WG;
    let n = plane / P.channels;
    if (n * P.inner >= P.pixels) {
        return;
    }
    let c = plane - n * P.channels;
    let stride = P.inner / LANES;
    for (var k = 0u; k < FLAT_UNITS; k = k + 1u) {
        let jl = strip_at(j0, k, lid, FLAT_UNITS, QW);
        if (jl < stride) {
            let e = plane * stride + jl;
            if (MULTI == 1u) {
                let qg = n * stride + jl;
                let p = exp(V(x_flat[e]) - pix[2u * qg]);
                put_flat(e, coef[0] * p * (V(t_flat[e]) - pix[2u * qg + 1u]));
            } else {
                put_flat(e, dl_dp_v(c, V(t_flat[e])) * dsigmoid(V(x_flat[e])));
            }
        }
    }
}

// The GQ accesses of thread lid (< TB) in swept workgroup g (P.gtps per sample, GQ TB accesses
// each): each one's window-local index qg (of its four pixels) and channel 0's element
// `first`, and whether it lies in the sample (`ok`; an access past the sample reads its last
// one and never writes). `live`: the workgroup holds a sample of the window.
struct Swept {
    live: bool,
    ok: array<bool, GQ>,
    qg: array<u32, GQ>,
    first: array<u32, GQ>,
}

fn swept_at(g: u32, lid: u32) -> Swept {
    var a: Swept;
    let n = g / P.gtps;
    a.live = n * P.inner < P.pixels;
    let j0 = (g - n * P.gtps) * GQ * TB;
    let stride = P.inner / LANES;
    for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
        let jl = strip_at(j0, q, lid, GQ, QW);
        a.ok[q] = jl < stride;
        let jc = min(jl, stride - 1u);
        a.qg[q] = n * stride + jc;
        a.first[q] = n * P.channels * stride + jc;
    }
    return a;
}

// Per class through the softmax beyond the held channels, with thread partials (TPART), over
// GQ accesses per thread class by class (as swept_grad): one sweep for each pixel's maximum and
// exp-sum (fold_max; its log-sum-exp to pix), then one for each channel's sums, which go out
// as the thread's partials (column (P.tile_base + g) WG + lid of rows of P.tiles WG).
@compute @workgroup_size(256)
fn swept_stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let a = swept_at(g, lid);
    if (!a.live) {
        return;
    }
    let stride = P.inner / LANES;
    let C = P.channels;
    let row = P.tiles * WG;
    let colt = (P.tile_base + g) * WG + lid;
    if (lid >= TB) {
        // Past the block's threads (TB < WG: losses/mod.rs block_threads): zero partials.
        for (var c = 0u; c < C; c = c + 1u) {
            partials[c * row + colt] = 0.0;
            partials[(P.groups + c) * row + colt] = 0.0;
        }
        return;
    }
    var m: array<V, GQ>;
    var rs: array<V, GQ>;
    for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
        m[q] = V(x_flat[a.first[q]]);
        rs[q] = V(1.0);
    }
    for (var c = 1u; c < C; c = c + 1u) {
        for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
            // Through a local: naga 30's SPIR-V writer panics on a pointer to the element.
            var mq = m[q];
            let f = fold_max(&mq, V(x_flat[a.first[q] + c * stride]));
            m[q] = mq;
            rs[q] = rs[q] * f.r + f.q;
        }
    }
    for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
        if (a.ok[q]) {
            pix[2u * a.qg[q]] = m[q] + log(rs[q]);
        }
        rs[q] = 1.0 / rs[q];
    }
    for (var c = 0u; c < C; c = c + 1u) {
        var acc = vec2<f32>(0.0);
        for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
            let e = a.first[q] + c * stride;
            let p = exp(V(x_flat[e]) - m[q]) * rs[q];
            let tv = V(t_flat[e]);
            let d = vec2<f32>(hsum(p * tv), hsum(p + tv));
            acc = acc + select(vec2<f32>(0.0), d, a.ok[q]);
        }
        partials[c * row + colt] = acc.x;
        partials[(P.groups + c) * row + colt] = acc.y;
    }
}

// The gradient through the channel softmax (per class, or the global ratio) over GQ accesses
// of four pixels per thread at once, class by class: dx_c = p_c (dL/dp_c - u), p_c =
// exp(x_c - lse) with lse from pix, u = sum_c p_c dL/dp_c (per class, a first sweep; the
// global ratio's is a pt + b with pt from pix). A workgroup's first TB threads own GQ TB
// accesses of one sample (P.gtps workgroups per sample), a thread's in strips of QW threads:
// with the CPU kernels a SIMD group reads GQ runs of QW accesses of a plane before the next
// plane, where a pixel's C planes at once (multi_grad) were C streams a power-of-two plane
// stride apart, which a CPU's prefetchers and cache sets do not keep (as cross_entropy.wgsl's
// quads_swept).
@compute @workgroup_size(256)
fn swept_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let a = swept_at(g, lid);
    // Past the block's threads (TB < WG: losses/mod.rs block_threads): nothing.
    if (!a.live || lid >= TB) {
        return;
    }
    let stride = P.inner / LANES;
    let C = P.channels;
    var lse: array<V, GQ>;
    var u: array<V, GQ>;
    for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
        lse[q] = pix[2u * a.qg[q]];
        if (PER_CLASS == 1u) {
            u[q] = V(0.0);
        } else {
            u[q] = coef[0] * pix[2u * a.qg[q] + 1u] + coef[P.groups];
        }
    }
    if (PER_CLASS == 1u) {
        for (var c = 0u; c < C; c = c + 1u) {
            let ka = coef[c];
            let kb = coef[P.groups + c];
            for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
                let e = a.first[q] + c * stride;
                u[q] = u[q] + exp(V(x_flat[e]) - lse[q]) * (ka * V(t_flat[e]) + kb);
            }
        }
    }
    // Last channel first: the planes read last are the ones still cached.
    for (var cr = 0u; cr < C; cr = cr + 1u) {
        let c = C - 1u - cr;
        // dL/dp_c = ka t_c + kb.
        var ka = coef[0];
        var kb = coef[P.groups];
        if (PER_CLASS == 1u) {
            ka = coef[c];
            kb = coef[P.groups + c];
        }
        for (var q = 0u; q < GQ; q = q + 1u) { // #unroll
            let e = a.first[q] + c * stride;
            let p = exp(V(x_flat[e]) - lse[q]);
            let d = p * (ka * V(t_flat[e]) + kb - u[q]);
            if (a.ok[q]) {
                put_flat(e, d);
            }
        }
    }
}
