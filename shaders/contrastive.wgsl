// ContrastiveLoss: l_i = y_i d_i^2 + (1 - y_i) max(0, margin - d_i)^2 over pairs of rows of
// e1, e2 [N, D], with d = ||e1 - e2 + 1e-6|| (PyTorch pairwise_distance) or d = 1 - cos
// (PyTorch cosine_similarity: cos = sum (a / na) (b / nb), na = max(||a||, 1e-8)).
// TPR (threads per row) is set when the shader is composed: 4, 8 to 128 or 256; a workgroup handles
// WG / TPR rows, each row's TPR threads stride over D.
//
// Traffic: per row, read 1 of both embeddings (the sums: |diff|^2, or a.b, |a|^2, |b|^2, reduced
// over the row's threads), read 2 of both (mostly from cache: one row is 8 KiB at D = 2048) to
// write both gradients, one label read; one partial loss per workgroup (mean / sum, folded by
// reduce.wgsl, then `finalize`) or one loss per row (none).

struct Params {
    rows: u32,        // pairs in this window
    dim: u32,         // D
    flags: u32,       // bit 0 accumulate, bit 1 cosine (the kernels use ACCUM and COSINE)
    part_base: u32,   // index of this window's first workgroup among all partials
    margin: f32,
    grad_scale: f32,  // upstream scale times d(reduction): 1/N for mean
    loss_scale: f32,  // 1/N for mean, 1 for sum
    pairwise_eps: f32, // 1e-6, from the uniform buffer: as a literal, drivers re-associate
                       // (a - b) + 1e-6 into (a + 1e-6) - b, which loses the offset at a = b
    label_base: u32,  // index of this window's first pair in `label` / `elem_loss` (0 when those are windowed too)
}

@group(0) @binding(0) var<uniform> P: Params;
// Embeddings and gradients LANES features per access (kernel.rs LANES_1 / LANES_4; four where
// D is a multiple of 4).
@group(0) @binding(1) var<storage, read> e1: array<V>;
@group(0) @binding(2) var<storage, read> e2: array<V>;
@group(0) @binding(3) var<storage, read> label: array<f32>;
@group(0) @binding(4) var<storage, read_write> g1: array<V>;
@group(0) @binding(5) var<storage, read_write> g2: array<V>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> elem_loss: array<f32>;
@group(0) @binding(8) var<storage, read> ltot: array<f32>;
@group(0) @binding(9) var<storage, read_write> loss_out: array<f32>;

const COSINE_EPS: f32 = 1e-8;

fn put_grads(i: u32, a: V, b: V) {
    if (ACCUM == 1u) {
        g1[i] = g1[i] + a;
        g2[i] = g2[i] + b;
    } else {
        g1[i] = a;
        g2[i] = b;
    }
}

// The loss of pair r (on every thread of the row); writes the pair's gradients.
fn row(lid: u32, r: u32) -> f32 {
    let lane = lid % TPR;
    let live = r < P.rows;
    let units = P.dim / LANES;
    let base = r * units;
    // A compile-time choice: lavapipe would run both sides of a uniform branch.
    let cosine = COSINE == 1u;

    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    if (live) {
        for (var c = lane; c < units; c = c + TPR) {
            let a = e1[base + c];
            let b = e2[base + c];
            if (cosine) {
                s0 = s0 + hsum(a * b);
                s1 = s1 + hsum(a * a);
                s2 = s2 + hsum(b * b);
            } else {
                let t = a - b + P.pairwise_eps;
                s0 = s0 + hsum(t * t);
            }
        }
    }
    let dot = seg_sum(lid, s0);
    var ra = 0.0;
    var rb = 0.0;
    if (cosine) {
        ra = sqrt(seg_sum(lid, s1));
        rb = sqrt(seg_sum(lid, s2));
    }
    let na = max(ra, COSINE_EPS);
    let nb = max(rb, COSINE_EPS);
    let cosv = dot / (na * nb);
    var d = sqrt(dot);
    if (cosine) {
        d = 1.0 - cosv;
    }
    var y = 0.0;
    if (live) {
        y = label[P.label_base + r];
    }
    let hinge = max(0.0, P.margin - d);
    let l = y * d * d + (1.0 - y) * hinge * hinge;
    let dl = P.grad_scale * (2.0 * y * d - 2.0 * (1.0 - y) * hinge);

    if (live) {
        // Euclidean: dd/da = (a - b + 1e-6) / d = -dd/db (0 at d = 0, as PyTorch's norm).
        var ce = 0.0;
        if (d > 0.0) {
            ce = dl / d;
        }
        // Cosine: dd/da = -(b / (na nb) - cos a / (na ||a||)), the norm term 0 where ||a|| = 0.
        let inv = dl / (na * nb);
        var ta = 0.0;
        if (ra > 0.0) {
            ta = dl * cosv / (na * ra);
        }
        var tb = 0.0;
        if (rb > 0.0) {
            tb = dl * cosv / (nb * rb);
        }
        for (var c = lane; c < units; c = c + TPR) {
            let a = e1[base + c];
            let b = e2[base + c];
            if (cosine) {
                put_grads(base + c, ta * a - inv * b, tb * b - inv * a);
            } else {
                let g = ce * (a - b + P.pairwise_eps);
                put_grads(base + c, g, -g);
            }
        }
    }
    return l;
}

@compute @workgroup_size(256)
fn rows_reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    let r = g * rpw + lid / TPR;
    let l = row(lid, r);
    var mine = 0.0;
    if (lid % TPR == 0u && r < P.rows) {
        mine = l;
    }
    let s = wg_sum(lid, mine);
    if (lid == 0u) {
        partials[P.part_base + g] = s;
    }
}

@compute @workgroup_size(256)
fn rows_none(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let rpw = WG / TPR;
    if (g * rpw >= P.rows) {
        return;
    }
    let r = g * rpw + lid / TPR;
    let l = row(lid, r);
    if (lid % TPR == 0u && r < P.rows) {
        elem_loss[P.label_base + r] = l;
    }
}

@compute @workgroup_size(1)
fn finalize() {
    loss_out[0] = ltot[0] * P.loss_scale;
}
