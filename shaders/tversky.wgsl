// TverskyLoss as segmentation_models_pytorch defines it. Composed with:
//   MODE 0: binary: p = sigmoid(x), one class over every element (the host flattens);
//        1: multiclass: p = softmax of x over the channels, class c's target is (label == c);
//        2: multilabel: p = sigmoid(x) per element, one class per channel.
// The input is seen as [samples, C, inner]; a thread owns one pixel. Per class c, over the
// batch and the spatial positions: I = sum p t, Ps = sum p, T = sum t (rows c, G + c, 2G + c of
// the partials); finalize gives the loss and dL/dp = coef[c] t + coef[G + c]; the grad pass
// goes back through the sigmoid or the softmax.

const ITEMS: u32 = 16u;

// Pixel `it` of thread lid in tile g: common.wgsl's strip_at with runs of QW threads (lavapipe:
// 14-27% off FocalLoss at 19 to 150 classes against pixels a workgroup apart).
fn pixel_at(g: u32, it: u32, lid: u32) -> u32 {
    return strip_at(g * ITEMS * WG, it, lid, ITEMS, QW);
}

struct Params {
    pixels: u32,     // pixels of this window
    inner: u32,      // product of the spatial sizes
    channels: u32,   // C
    tile_base: u32,  // index of the window's first tile among all tiles
    tiles: u32,      // tiles of the whole tensor (row length of `partials`)
    groups: u32,     // G (classes)
    label_base: u32, // the window's first pixel in `labels` (labels bound whole), else 0
    _pad0: u32,
    alpha: f32,
    beta: f32,
    gamma: f32,
    smooth_: f32,
    eps: f32,
    grad_scale: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<In>;
@group(0) @binding(2) var<storage, read> t: array<In>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read> totals: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> coef: array<f32>;
@group(0) @binding(9) var<storage, read_write> flag: array<u32>;

fn first_elem(q: u32) -> u32 {
    let n = q / P.inner;
    let k = q - n * P.inner;
    return n * P.channels * P.inner + k;
}

// The label of pixel q (multiclass); one out of range sets the flag (and counts as no class).
fn label_of(q: u32) -> i32 {
    if (MODE != 1u) {
        return -1;
    }
    let y = labels[P.label_base + q];
    if (y < 0 || u32(y) >= P.channels) {
        flag[0] = 1u;
        return -1;
    }
    return y;
}

fn target_of(e: u32, c: u32, lab: i32) -> f32 {
    if (MODE == 1u) {
        return select(0.0, 1.0, i32(c) == lab);
    }
    return f32(t[e]);
}

// The softmax max and exp-sum of pixel q's channels (multiclass).
fn softmax_ms(e0: u32) -> vec2<f32> {
    var m = f32(x[e0]);
    var s = 1.0;
    for (var c = 1u; c < P.channels; c = c + 1u) {
        let xv = f32(x[e0 + c * P.inner]);
        if (xv > m) {
            s = s * exp(m - xv) + 1.0;
            m = xv;
        } else {
            s = s + exp(xv - m);
        }
    }
    return vec2<f32>(m, s);
}

@compute @workgroup_size(256)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g * ITEMS * WG >= P.pixels) {
        return;
    }
    let col = P.tile_base + g;
    let G = P.groups;
    var mx: array<f32, ITEMS>;
    var sm: array<f32, ITEMS>;
    var lab: array<i32, ITEMS>;
    for (var it = 0u; it < ITEMS; it = it + 1u) {
        mx[it] = 0.0;
        sm[it] = 1.0;
        lab[it] = -1;
        let q = pixel_at(g, it, lid);
        if (MODE == 1u && q < P.pixels) {
            let ms = softmax_ms(first_elem(q));
            mx[it] = ms.x;
            sm[it] = ms.y;
            lab[it] = label_of(q);
        }
    }
    for (var c = 0u; c < P.channels; c = c + 1u) {
        var acc = vec3<f32>(0.0);
        for (var it = 0u; it < ITEMS; it = it + 1u) {
            let q = pixel_at(g, it, lid);
            if (q < P.pixels) {
                let e = first_elem(q) + c * P.inner;
                var p: f32;
                if (MODE == 1u) {
                    p = exp(f32(x[e]) - mx[it]) / sm[it];
                } else {
                    p = sigmoid(f32(x[e]));
                }
                let tv = target_of(e, c, lab[it]);
                acc = acc + vec3<f32>(p * tv, p, tv);
            }
        }
        let s2 = wg_sum2(lid, acc.xy);
        let s1 = wg_sum(lid, acc.z);
        if (lid == 0u) {
            partials[c * P.tiles + col] = s2.x;
            partials[(G + c) * P.tiles + col] = s2.y;
            partials[(2u * G + c) * P.tiles + col] = s1;
        }
    }
}

// m^e for m >= 0 (0^0 = 1).
fn pow_nn(m: f32, e: f32) -> f32 {
    if (e == 0.0) {
        return 1.0;
    }
    if (m <= 0.0) {
        return 0.0;
    }
    return exp2(e * log2(m));
}

// The loss mean_c(loss_c)^gamma and, per class, dL/dp = coef[c] t + coef[G + c].
@compute @workgroup_size(1)
fn finalize() {
    let G = P.groups;
    let a = P.alpha;
    let b = P.beta;
    var total = 0.0;
    for (var c = 0u; c < G; c = c + 1u) {
        let i = totals[c];
        let d = i + a * (totals[G + c] - i) + b * (totals[2u * G + c] - i) + P.smooth_;
        let score = (i + P.smooth_) / max(d, P.eps);
        if (totals[2u * G + c] > 0.0) {
            total = total + 1.0 - score;
        }
    }
    let m = total / f32(G);
    loss_out[0] = pow_nn(m, P.gamma);
    // dL/dm = gamma m^(gamma - 1); at m = 0 it is 1 for gamma = 1, else 0.
    var dm = 0.0;
    if (P.gamma == 1.0) {
        dm = 1.0;
    } else if (m > 0.0 && P.gamma != 0.0) {
        dm = P.gamma * pow_nn(m, P.gamma - 1.0);
    }
    for (var c = 0u; c < G; c = c + 1u) {
        let i = totals[c];
        let d = i + a * (totals[G + c] - i) + b * (totals[2u * G + c] - i) + P.smooth_;
        let den = max(d, P.eps);
        let num = i + P.smooth_;
        var k = 0.0;
        if (totals[2u * G + c] > 0.0) {
            // dL/dscore_c
            k = -dm / f32(G) * P.grad_scale;
        }
        // dscore/dp = t / den - num ((1 - a - b) t + a) / den^2 (the clamp passes no gradient).
        var ca = k / den;
        var cb = 0.0;
        if (d >= P.eps) {
            ca = ca - k * num * (1.0 - a - b) / (den * den);
            cb = -k * num * a / (den * den);
        }
        coef[c] = ca;
        coef[G + c] = cb;
    }
}

@compute @workgroup_size(256)
fn grad_pass(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let C = P.channels;
    let G = P.groups;
    for (var it = 0u; it < ITEMS; it = it + 1u) {
        let q = pixel_at(g, it, lid);
        if (q >= P.pixels) {
            continue;
        }
        let e0 = first_elem(q);
        if (MODE == 1u) {
            let lab = label_of(q);
            let ms = softmax_ms(e0);
            var dot = 0.0;
            for (var c = 0u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                let p = exp(f32(x[e]) - ms.x) / ms.y;
                dot = dot + p * (coef[c] * target_of(e, c, lab) + coef[G + c]);
            }
            for (var c = 0u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                let p = exp(f32(x[e]) - ms.x) / ms.y;
                let d = p * (coef[c] * target_of(e, c, lab) + coef[G + c] - dot);
                if (ACCUM == 1u) {
                    grad[e] = grad[e] + d;
                } else {
                    grad[e] = d;
                }
            }
        } else {
            for (var c = 0u; c < C; c = c + 1u) {
                let e = e0 + c * P.inner;
                var k = c;
                if (MODE == 0u) {
                    k = 0u;
                }
                let d = (coef[k] * f32(t[e]) + coef[G + k]) * dsigmoid(f32(x[e]));
                if (ACCUM == 1u) {
                    grad[e] = grad[e] + d;
                } else {
                    grad[e] = d;
                }
            }
        }
    }
}
