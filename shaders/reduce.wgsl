// Deterministic tree reduction of per-workgroup partial sums.
// `src` holds `rows` rows of `cols` partials (row-major). Workgroup (x, row) sums the
// CHUNK = RI * WG consecutive partials of its row that start at x * CHUNK, and writes one value
// to dst[row * out_cols + x]. Repeated until one column is left; no atomics, fixed order.
// RI (partials per thread, set by the host) is 4 for a GPU's many workgroups and larger for a
// CPU adapter, which pays per workgroup.

struct Params {
    cols: u32,
    out_cols: u32,
    rows: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let x = wid.x;
    let row = wid.y;
    let base = row * P.cols;
    let start = x * RI * WG;
    var acc = 0.0;
    for (var k = 0u; k < RI; k = k + 1u) {
        let c = start + k * WG + lid;
        if (c < P.cols) {
            acc = acc + src[base + c];
        }
    }
    let total = wg_sum(lid, acc);
    if (lid == 0u) {
        dst[row * P.out_cols + x] = total;
    }
}
