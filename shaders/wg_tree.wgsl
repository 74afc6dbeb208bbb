// Workgroup reductions by a barrier tree over workgroup memory: every adapter.
// Each is deterministic (the same order every run) and must be called from uniform control
// flow by every invocation of the workgroup.

var<workgroup> red: array<f32, 256>;

// No subgroup reductions in this variant: segment reductions (TPR == SG) never take them.
const SG: u32 = 0u;
fn subgroup_sum(v: f32) -> f32 {
    return v;
}
fn subgroup_max(v: f32) -> f32 {
    return v;
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

var<workgroup> red2: array<vec2<f32>, 256>;

// Two sums at once, with the barriers of one (same order and rules as wg_sum).
fn wg_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red2[lid] = red2[lid] + red2[lid + s];
        }
        workgroupBarrier();
    }
    let r = red2[0];
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
