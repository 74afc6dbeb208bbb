// MSELoss, L1Loss and RMSELoss: two inputs of one shape compared element by element.
// KIND is set when the shader is composed: 0 = MSE, 1 = L1, 2 = RMSE.
// Each workgroup owns one tile of TILE = ITEMS * WG consecutive elements of the window and
// writes one partial sum per tile; reduce.wgsl folds the partials, `finalize` makes the loss.
// Written over `V` (kernel.rs LANES_1 / LANES_4): one element or four consecutive ones per
// access; the four-lane variant runs only on windows whose length is a multiple of 4.

const ITEMS: u32 = 32u;
// Accesses per invocation and tile.
const UNITS: u32 = ITEMS / LANES;

struct Params {
    n: u32,          // elements in this window (a multiple of LANES)
    tile_base: u32,  // index of the window's first tile among all tiles of the tensor
    tiles: u32,      // number of tiles of the whole tensor (row length of `partials`)
    flags: u32,      // bit 0: accumulate (the kernels use the constant ACCUM: kernel.rs)
    grad_scale: f32, // upstream scale times d(reduction): 1/N for mean, 1 for sum and none
    inv_n: f32,      // 1 / N over the whole tensor
    eps: f32,        // RMSE eps
    loss_scale: f32, // the reduction of the summed loss: 1/N for mean, 1 for sum
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<InV>;
@group(0) @binding(2) var<storage, read> t: array<InV>;
@group(0) @binding(3) var<storage, read_write> grad: array<V>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read> totals: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> elem_loss: array<V>;

// The floats in their order as integers, -0 and +0 equal.
fn order_key(v: V) -> VI {
    let b = bitcast<VI>(v);
    return select(b, (b ^ VI(0x7fffffff)) + VI(1), b < VI(0));
}

// sign(x - y), exact also where x - y, x or y is subnormal: WGSL lets an adapter flush
// subnormals to zero in float arithmetic and comparisons (NVIDIA's Vulkan driver does), which
// would turn the L1 gradient of 0 - 1e-40 into 0. `d` = x - y, returned where it is NaN.
fn sign_of_difference(x: V, y: V, d: V) -> V {
    let kx = order_key(x);
    let ky = order_key(y);
    let s = select(V(0.0), V(1.0), kx > ky) - select(V(0.0), V(1.0), kx < ky);
    return select(s, d, (bitcast<VU>(d) & VU(0x7fffffffu)) > VU(0x7f800000u));
}

struct Pair {
    l: V, // loss
    d: V, // its derivative with respect to `a`
}

fn elem(x: V, y: V) -> Pair {
    let d = x - y;
    if (KIND == 1u) {
        return Pair(abs(d), sign_of_difference(x, y, d));
    }
    return Pair(d * d, 2.0 * d);
}

fn put_grad(j: u32, g: V) {
    if (ACCUM == 1u) {
        grad[j] = grad[j] + g;
    } else {
        grad[j] = g;
    }
}

// Partial sums of the loss, and (MSE, L1) the gradient in the same read of the inputs.
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
            let e = elem(V(a[j]), V(t[j]));
            acc = acc + hsum(e.l);
            put_grad(j, e.d * P.grad_scale);
        }
    }
    let s = wg_sum(lid, acc);
    if (lid == 0u) {
        partials[P.tile_base + g] = s;
    }
}

// Partial sums only (RMSE: its gradient needs the total first).
@compute @workgroup_size(256)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
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
            acc = acc + hsum(elem(V(a[j]), V(t[j])).l);
        }
    }
    let s = wg_sum(lid, acc);
    if (lid == 0u) {
        partials[P.tile_base + g] = s;
    }
}

fn rmse_value() -> f32 {
    return sqrt(totals[0] * P.inv_n + P.eps);
}

@compute @workgroup_size(1)
fn finalize() {
    if (KIND == 2u) {
        loss_out[0] = rmse_value();
    } else {
        loss_out[0] = totals[0] * P.loss_scale;
    }
}

// RMSE: d loss / d output = (output - target) / (N * loss); 0 where the loss is 0 (0/0).
@compute @workgroup_size(256)
fn rmse_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let units = P.n / LANES;
    let r = rmse_value();
    var c = 0.0;
    if (r > 0.0) {
        c = P.inv_n / r * P.grad_scale;
    }
    for (var k = 0u; k < UNITS; k = k + 1u) {
        let j = (g * UNITS + k) * WG + lid;
        if (j < units) {
            put_grad(j, (V(a[j]) - V(t[j])) * c);
        }
    }
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
            let e = elem(V(a[j]), V(t[j]));
            elem_loss[j] = e.l;
            put_grad(j, e.d * P.grad_scale);
        }
    }
}
