// The per-operation baseline of `deepml bench`: one kernel per elementary operation, the way a
// tensor framework runs an unfused loss (each op reads its operands from memory and writes its
// result back). Not used by the losses themselves. Like a framework's element-wise kernels, the
// four-lane variant (kernel.rs LANES_4, where the length is a multiple of 4) moves four
// elements per access.

const ITEMS: u32 = 4u;
const UNITS: u32 = ITEMS / LANES;

struct Params {
    n: u32,
    row: u32,     // sum: the row of `partials` this sum writes; scalar: the opcode
    i0: u32,      // index of the first scalar operand in `s`
    i1: u32,      // index of the second scalar operand in `s`
    c0: f32,
    c1: f32,
    tiles: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read_write> out: array<V>;
@group(0) @binding(4) var<storage, read> s: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> sout: array<f32>;

// The first access of this workgroup (in units of LANES elements).
fn base_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return group_index(wid, nwg) * UNITS * WG;
}

fn units() -> u32 {
    return P.n / LANES;
}

@compute @workgroup_size(256)
fn sigmoid_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = sigmoid(a[i]); } }
}
@compute @workgroup_size(256)
fn softplus_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = softplus(a[i]); } }
}
@compute @workgroup_size(256)
fn neg_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = -a[i]; } }
}
@compute @workgroup_size(256)
fn abs_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = abs(a[i]); } }
}
@compute @workgroup_size(256)
fn sign_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = sign(a[i]); } }
}
@compute @workgroup_size(256)
fn one_minus_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = 1.0 - a[i]; } }
}
@compute @workgroup_size(256)
fn add_c_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] + P.c0; } }
}
@compute @workgroup_size(256)
fn log_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = log(a[i]); } }
}
@compute @workgroup_size(256)
fn sub_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] - b[i]; } }
}
@compute @workgroup_size(256)
fn mul_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] * b[i]; } }
}
@compute @workgroup_size(256)
fn div_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] / b[i]; } }
}
// out = c0 * a + c1 * b
@compute @workgroup_size(256)
fn lin2_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = P.c0 * a[i] + P.c1 * b[i]; } }
}
// out = a * s[i0]
@compute @workgroup_size(256)
fn mul_scalar_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] * s[P.i0]; } }
}
// out = a * s[i0] + s[i1]
@compute @workgroup_size(256)
fn fma_scalar_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i] * s[P.i0] + s[P.i1]; } }
}
// Partial sums of `a` into row P.row of `partials` (one per tile of ITEMS * WG elements).
@compute @workgroup_size(256)
fn sum_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    var acc = 0.0;
    let g = group_index(wid, nwg);
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { acc += hsum(a[i]); } }
    let t = wg_sum(lid, acc);
    if (lid == 0u && g < P.tiles) { partials[P.row * P.tiles + g] = t; }
}
// The scalar tail of a loss, as a framework's 0-d tensor ops (one launch for all of them here).
// opcode 0, RMSE: s = [sum d^2] -> sout = [loss, 1 / (n loss)]
// opcode 1, mean: s = [sum l]   -> sout = [sum / n, c0 / n]
// opcode 2, Jaccard: s = [I, sum p, sum t] -> U = sum p + sum t - I + c0,
//           sout = [1 - I / U, -(U + I) / U^2, I / U^2]
@compute @workgroup_size(1)
fn scalar_op() {
    let n = f32(P.n);
    if (P.row == 0u) {
        let l = sqrt(s[0] / n + P.c0);
        sout[0] = l;
        sout[1] = 1.0 / (n * l);
    } else if (P.row == 1u) {
        sout[0] = s[0] / n;
        sout[1] = P.c0 / n;
    } else {
        let i = s[0];
        let u = s[1] + s[2] - i + P.c0;
        sout[0] = 1.0 - i / u;
        sout[1] = -(u + i) / (u * u);
        sout[2] = i / (u * u);
    }
}
// A copy, the roofline of memory-bound kernels: out = a.
@compute @workgroup_size(256)
fn copy_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var k = 0u; k < UNITS; k++) { let i = base_index(wid, nwg) + k * WG + lid; if (i < units()) { out[i] = a[i]; } }
}

// The same copy with 16-byte loads and stores in either variant (the roofline: the fastest copy
// the adapter does); P.n counts vec4s here.
@group(0) @binding(6) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy4_op(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = group_index(wid, nwg) * ITEMS * WG;
    for (var k = 0u; k < ITEMS; k++) { let i = base + k * WG + lid; if (i < P.n) { out4[i] = a4[i]; } }
}
