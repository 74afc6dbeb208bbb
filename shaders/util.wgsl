// Small kernels the training loops need: x += a * y in place (an SGD step), and the weighted
// accumulation of scalar losses into a total (Combined).

struct Params {
    n: u32,
    first: u32,   // accumulate_scalar: 1 when this is the first term (overwrite the total)
    a: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(256)
fn axpy(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = group_index(wid, nwg) * 4u * WG;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = base + k * WG + lid;
        if (i < P.n) {
            x[i] = x[i] + P.a * y[i];
        }
    }
}

@compute @workgroup_size(256)
fn fill_zero(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = group_index(wid, nwg) * 4u * WG;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = base + k * WG + lid;
        if (i < P.n) {
            x[i] = 0.0;
        }
    }
}

@compute @workgroup_size(1)
fn accumulate_scalar() {
    if (P.first != 0u) {
        x[0] = P.a * y[0];
    } else {
        x[0] = x[0] + P.a * y[0];
    }
}

// check_finite: sets flags[1] when `y` holds NaN or infinity (an all-ones exponent: a bit test,
// since compilers may assume floats are never NaN).
@group(0) @binding(3) var<storage, read_write> flags: array<u32>;

@compute @workgroup_size(256)
fn check_finite(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = group_index(wid, nwg) * 4u * WG;
    var bad = false;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = base + k * WG + lid;
        if (i < P.n) {
            bad = bad || ((bitcast<u32>(y[i]) & 0x7f800000u) == 0x7f800000u);
        }
    }
    if (bad) {
        flags[1] = 1u;
    }
}
