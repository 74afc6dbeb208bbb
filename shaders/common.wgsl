// Shared by every deepml shader: the workgroup size, the linear workgroup index of a 2-D grid
// (grids wider than 65535 workgroups wrap into y), and a deterministic workgroup tree sum.

const WG: u32 = 256u;

var<workgroup> red: array<f32, 256>;

// The index of this workgroup in a grid dispatched as (x, y, 1).
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Sum of `v` over the workgroup, always in the same order: bit-identical from run to run.
// Must be called from uniform control flow by every invocation of the workgroup.
fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Maximum of `v` over the workgroup (same rules as wg_sum).
fn wg_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// ln(1 + exp(x)) without overflow or cancellation.
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}

// The logistic sigmoid, finite for every finite x.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}
