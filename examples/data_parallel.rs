//! One training step's losses with the batch split across MPI ranks, each rank on its own
//! device, checked against the loss of the whole batch on one device:
//!
//! ```text
//! cargo build --release --features mpi --example data_parallel
//! mpiexec -n 4 target/release/examples/data_parallel
//! ```
//!
//! 1. Data parallel: a multiclass segmentation batch `[N, C, H, W]`, its rows split unevenly
//!    (one rank may hold none), with `DiceLoss(per_class) + 0.5 CrossEntropyLoss(weight)`.
//! 2. Data parallel ArcFace: the rows split, the class weight replicated (its gradient summed).
//! 3. Class parallel ArcFace (PartialFC): every rank holds the whole batch and a slice of the
//!    class weight.
//!
//! Each rank prints the largest relative difference of the value and of its gradients from the
//! whole batch's, and the bytes it sent per step; it exits with an error past 1e-5.

use deepml::shard::{Collective, Metered, Mpi};
use deepml::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The largest difference of `got` from `want`, relative to the largest magnitude of `want`.
fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).abs() / scale)
        .fold(0.0, f64::max)
}

/// Rows `[first, first + count)` of rank `r` among `size` ranks: uneven shards, and with four
/// ranks or more an empty one (rank 1).
fn shard(n: usize, r: usize, size: usize) -> (usize, usize) {
    let weights: Vec<usize> = (0..size)
        .map(|k| if size >= 4 && k == 1 { 0 } else { k + 1 })
        .collect();
    let total: usize = weights.iter().sum();
    let mut bounds = vec![0];
    let mut acc = 0;
    for w in &weights {
        acc += w;
        bounds.push(n * acc / total);
    }
    (bounds[r], bounds[r + 1] - bounds[r])
}

struct Report {
    what: &'static str,
    value: f32,
    value_rel: f64,
    grad_rel: f64,
    bytes: u64,
    calls: u64,
}

fn main() -> Result<()> {
    let mpi = Metered::new(Mpi::init()?);
    let (rank, size) = (mpi.rank(), mpi.size());
    let ctx = LossContext::new()?;
    let mut reports = Vec::new();
    // Every rank draws the same whole batch from one seed, and keeps its rows.
    let mut rng = SmallRng::seed_from_u64(2026);

    // 1. Segmentation: Dice per class + weighted cross-entropy over [N, C, H, W].
    let (n, c, h, w) = (10, 4, 16, 16);
    let hw = h * w;
    let logits: Vec<f32> = (0..n * c * hw).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let labels: Vec<i32> = (0..n * hw).map(|_| rng.gen_range(0..c as i32)).collect();
    let mut onehot = vec![0.0f32; n * c * hw];
    for i in 0..n {
        for p in 0..hw {
            onehot[(i * c + labels[i * hw + p] as usize) * hw + p] = 1.0;
        }
    }
    let seg = Combined::new()
        .term(1.0, DiceLoss::multiclass().per_class(true), &[0, 1])
        .term(
            0.5,
            CrossEntropyLoss {
                weight: Some(HostTensor::new(vec![0.5, 1.0, 2.0, 1.5], vec![c])?),
                ..Default::default()
            },
            &[0, 2],
        );
    let upload = |first: usize, rows: usize| -> Result<Vec<Tensor>> {
        let (a, b) = (first * c * hw, (first + rows) * c * hw);
        Ok(vec![
            ctx.upload(&logits[a..b], &[rows, c, h, w])?,
            ctx.upload(&onehot[a..b], &[rows, c, h, w])?,
            ctx.upload_labels(&labels[first * hw..(first + rows) * hw], &[rows, h, w])?,
        ])
    };
    let whole = upload(0, n)?;
    let want = seg.compute(&ctx, &whole.iter().collect::<Vec<_>>())?;
    let (first, rows) = shard(n, rank, size);
    let mine = upload(first, rows)?;
    mpi.take();
    let got = seg.compute_sharded(
        &ctx,
        &mine.iter().collect::<Vec<_>>(),
        &mpi,
        &GradOpts::default(),
    )?;
    let (bytes, calls) = mpi.take();
    let (gv, wv) = (got.value(&ctx)?, want.value(&ctx)?);
    let per = c * hw;
    let wg = ctx.read(&want.grads[0])?;
    reports.push(Report {
        what: "Dice(per class) + 0.5 CE(weight), [10, 4, 16, 16]",
        value: gv,
        value_rel: rel(&[gv], &[wv]),
        grad_rel: rel(
            &ctx.read(&got.grads[0])?,
            &wg[first * per..(first + rows) * per],
        ),
        bytes,
        calls,
    });

    // 2. ArcFace, rows split, weight replicated.
    let (n, d, classes) = (24, 32, 40);
    let x: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let y: Vec<i32> = (0..n).map(|_| rng.gen_range(0..classes as i32)).collect();
    let wt: Vec<f32> = (0..classes * d).map(|_| rng.gen_range(-0.2..0.2)).collect();
    let arc = AngularPenaltySMConfig::arcface(d, classes);
    let weight = ctx.upload(&wt, &[classes, d])?;
    let (xa, ya) = (ctx.upload(&x, &[n, d])?, ctx.upload_labels(&y, &[n])?);
    let want = arc.compute(&ctx, &[&xa, &ya, &weight])?;
    let (first, rows) = shard(n, rank, size);
    let xs = ctx.upload(&x[first * d..(first + rows) * d], &[rows, d])?;
    let ys = ctx.upload_labels(&y[first..first + rows], &[rows])?;
    mpi.take();
    let got = arc.compute_sharded(&ctx, &[&xs, &ys, &weight], &mpi, &GradOpts::default())?;
    let (bytes, calls) = mpi.take();
    let (gv, wv) = (got.value(&ctx)?, want.value(&ctx)?);
    let wgx = ctx.read(&want.grads[0])?;
    let grad_rel = rel(
        &ctx.read(&got.grads[0])?,
        &wgx[first * d..(first + rows) * d],
    )
    .max(rel(&ctx.read(&got.grads[1])?, &ctx.read(&want.grads[1])?));
    reports.push(Report {
        what: "ArcFace, rows split, weight replicated, [24, 32] x 40 classes",
        value: gv,
        value_rel: rel(&[gv], &[wv]),
        grad_rel,
        bytes,
        calls,
    });

    // 3. ArcFace, classes split (PartialFC): every rank the whole batch, a slice of W.
    let first_c = classes * rank / size;
    let count_c = classes * (rank + 1) / size - first_c;
    let local = AngularPenaltySMConfig::arcface(d, count_c);
    let wslice = ctx.upload(&wt[first_c * d..(first_c + count_c) * d], &[count_c, d])?;
    mpi.take();
    let got = local.compute_class_sharded(
        &ctx,
        &xa,
        &ya,
        &wslice,
        first_c,
        &mpi,
        &GradOpts::default(),
    )?;
    let (bytes, calls) = mpi.take();
    let gv = got.value(&ctx)?;
    let wgw = ctx.read(&want.grads[1])?;
    let grad_rel = rel(&ctx.read(&got.grads[0])?, &wgx).max(rel(
        &ctx.read(&got.grads[1])?,
        &wgw[first_c * d..(first_c + count_c) * d],
    ));
    reports.push(Report {
        what: "ArcFace, classes split (PartialFC), [24, 32] x 40 classes",
        value: gv,
        value_rel: rel(&[gv], &[wv]),
        grad_rel,
        bytes,
        calls,
    });

    let mut worst: f64 = 0.0;
    for r in &reports {
        println!(
            "rank {rank}/{size}: {}: loss {:.6}, value rel diff {:.2e}, gradient rel diff {:.2e}, sent {} bytes in {} all-reduces",
            r.what, r.value, r.value_rel, r.grad_rel, r.bytes, r.calls
        );
        worst = worst.max(r.value_rel).max(r.grad_rel);
    }
    if worst > 1e-5 {
        return Err(Error::InvalidInput(format!(
            "rank {rank}: the sharded losses differ from the whole batch's by {worst:.2e}"
        )));
    }
    Ok(())
}
