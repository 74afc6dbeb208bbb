// Workgroup reductions over subgroups, composed only where the context verified at start that
// the adapter's subgroups are SG consecutive local invocation indices (context.rs, probe): one
// subgroup operation, one partial per subgroup in workgroup memory, and every subgroup sums
// the WG / SG partials again in a fixed order; two barriers instead of the tree's ten. The
// results are deterministic on a device (its subgroup operations are), and differ from the
// tree's by rounding. Same contract: uniform control flow, every invocation of the workgroup.

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<vec2<f32>, 256>;

const SG_PARTS: u32 = WG / SG;

// Over one subgroup: a row segment of TPR == SG threads (cross_entropy, contrastive).
fn subgroup_sum(v: f32) -> f32 {
    return subgroupAdd(v);
}
fn subgroup_max(v: f32) -> f32 {
    return subgroupMax(v);
}

fn wg_sum(lid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (lid % SG == 0u) {
        red[lid / SG] = s;
    }
    workgroupBarrier();
    let lane = lid % SG;
    var t = 0.0;
    for (var k = 0u; k < SG_PARTS; k = k + SG) {
        if (k + lane < SG_PARTS) {
            t = t + red[k + lane];
        }
    }
    let r = subgroupAdd(t);
    workgroupBarrier();
    return r;
}

fn wg_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    let s = subgroupAdd(v);
    if (lid % SG == 0u) {
        red2[lid / SG] = s;
    }
    workgroupBarrier();
    let lane = lid % SG;
    var t = vec2<f32>(0.0);
    for (var k = 0u; k < SG_PARTS; k = k + SG) {
        if (k + lane < SG_PARTS) {
            t = t + red2[k + lane];
        }
    }
    let r = subgroupAdd(t);
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (lid % SG == 0u) {
        red[lid / SG] = s;
    }
    workgroupBarrier();
    let lane = lid % SG;
    // red[0] is always a partial, and max is idempotent: lanes without one of their own use it.
    var t = red[0];
    for (var k = 0u; k < SG_PARTS; k = k + SG) {
        if (k + lane < SG_PARTS) {
            t = max(t, red[k + lane]);
        }
    }
    let r = subgroupMax(t);
    workgroupBarrier();
    return r;
}
