// Reductions over a row segment of TPR consecutive threads (TPR, a power of two dividing WG,
// is set by the shader this file is composed with: cross_entropy.wgsl, contrastive.wgsl), in a
// fixed order, the result on every thread of the segment. Uniform control flow only.

// Sum of `v` over the segment.
fn seg_sum(lid: u32, v: f32) -> f32 {
    if (TPR == SG) {
        return subgroup_sum(v); // a segment is one subgroup (wg_subgroup.wgsl): no barrier
    }
    if (TPR == 1u) {
        return v;
    }
    red[lid] = v;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if ((lid % TPR) < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % TPR];
    workgroupBarrier();
    return r;
}

// Maximum of `v` over the segment.
fn seg_max(lid: u32, v: f32) -> f32 {
    if (TPR == SG) {
        return subgroup_max(v); // a segment is one subgroup (wg_subgroup.wgsl): no barrier
    }
    if (TPR == 1u) {
        return v;
    }
    red[lid] = v;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if ((lid % TPR) < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % TPR];
    workgroupBarrier();
    return r;
}
