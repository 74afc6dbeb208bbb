//! Class-sharded cross-entropy (`CrossEntropyLoss::compute_class_sharded`): each rank of an
//! in-process thread group (its own `LossContext`, its own device) holds a slice of the classes;
//! the value equals the unsharded loss over all classes on every rank, each rank's gradient is
//! the matching class slice of the unsharded gradient, results repeat bit for bit, and bad
//! input on one rank is an error on every rank.

mod common;

use deepml::shard::{Collective, Metered, ThreadGroup, ThreadRank};
use deepml::*;
use rand::Rng;

/// Total classes of the tests.
const C: usize = 7;

/// Class slices `(offset, count)` per rank, uneven (one rank holds a single class); the world
/// of three holds them out of rank order.
fn slices(k: usize) -> Vec<(usize, usize)> {
    match k {
        1 => vec![(0, 7)],
        2 => vec![(0, 5), (5, 2)],
        3 => vec![(4, 3), (0, 1), (1, 3)],
        4 => vec![(0, 2), (2, 1), (3, 3), (6, 1)],
        _ => unreachable!(),
    }
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    loss: CrossEntropyLoss,
    /// The whole logits' shape `[N, C, d...]`.
    shape: Vec<usize>,
    logits: Vec<f32>,
    labels: Vec<i32>,
}

impl Case {
    fn target_shape(&self) -> Vec<usize> {
        let mut t = vec![self.shape[0]];
        t.extend_from_slice(&self.shape[2..]);
        t
    }
    fn inner(&self) -> usize {
        self.shape[2..].iter().product()
    }
    /// The logits of classes `[off, off + cnt)`.
    fn slice(&self, off: usize, cnt: usize) -> (Vec<f32>, Vec<usize>) {
        slice_classes(&self.logits, self.shape[0], self.inner(), off, cnt)
            .pipe(|v| (v, self.sliced_shape(cnt)))
    }
    fn sliced_shape(&self, cnt: usize) -> Vec<usize> {
        let mut s = self.shape.clone();
        s[1] = cnt;
        s
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// Classes `[off, off + cnt)` of `[n, C, k]` values.
fn slice_classes(v: &[f32], n: usize, k: usize, off: usize, cnt: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * cnt * k);
    for i in 0..n {
        for c in off..off + cnt {
            out.extend_from_slice(&v[(i * C + c) * k..(i * C + c + 1) * k]);
        }
    }
    out
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = common::rng(seed);
    let weights = vec![0.5, 2.0, 1.0, 1.5, 0.25, 3.0, 0.75];
    let weighted = |reduction, ls, ignore| CrossEntropyLoss {
        weight: Some(HostTensor::new(weights.clone(), vec![C]).unwrap()),
        ignore_index: ignore,
        reduction,
        label_smoothing: ls,
    };
    let plain = |reduction, ls| CrossEntropyLoss {
        reduction,
        label_smoothing: ls,
        ..Default::default()
    };
    let configs: Vec<(&'static str, CrossEntropyLoss)> = vec![
        (
            "weighted, ignore 3, ls 0.1, mean",
            weighted(Reduction::Mean, 0.1, 3),
        ),
        (
            "weighted, ignore 3, ls 0.1, sum",
            weighted(Reduction::Sum, 0.1, 3),
        ),
        (
            "weighted, ignore -100, ls 0.2, none",
            weighted(Reduction::None, 0.2, -100),
        ),
        (
            "weighted, ignore -100, mean",
            weighted(Reduction::Mean, 0.0, -100),
        ),
        ("plain, mean", plain(Reduction::Mean, 0.0)),
        ("plain, ls 0.3, sum", plain(Reduction::Sum, 0.3)),
        ("plain, ls 0.1, none", plain(Reduction::None, 0.1)),
    ];
    let shapes: [&[usize]; 3] = [&[6, C], &[3, C, 4, 5], &[2, C, 3]];
    let mut out = Vec::new();
    for (name, loss) in configs {
        for shape in shapes {
            let n: usize = shape.iter().product();
            let positions = n / C;
            let labels = (0..positions)
                .map(|_| {
                    if rng.gen_range(0..5) == 0 {
                        loss.ignore_index as i32
                    } else {
                        rng.gen_range(0..C as i32)
                    }
                })
                .collect();
            out.push(Case {
                name,
                loss: loss.clone(),
                shape: shape.to_vec(),
                logits: common::uniform(&mut rng, n, -4.0, 4.0),
                labels,
            });
        }
    }
    out
}

/// The value (one number, or one per position) and the gradient.
#[derive(Clone, Debug, PartialEq)]
struct Got {
    loss: Vec<f32>,
    grad: Vec<f32>,
}

fn read(ctx: &LossContext, out: &LossOutput) -> Got {
    Got {
        loss: ctx.read(&out.loss).unwrap(),
        grad: ctx.read(&out.grads[0]).unwrap(),
    }
}

fn unsharded(ctx: &LossContext, c: &Case) -> Got {
    let x = ctx.upload(&c.logits, &c.shape).unwrap();
    let t = ctx.upload_labels(&c.labels, &c.target_shape()).unwrap();
    read(ctx, &c.loss.compute(ctx, &[&x, &t]).unwrap())
}

/// One rank's run of a case with the class slice `(off, cnt)`.
fn rank_run(
    ctx: &LossContext,
    c: &Case,
    coll: &dyn Collective,
    (off, cnt): (usize, usize),
) -> Result<Got> {
    let (v, shape) = c.slice(off, cnt);
    let x = ctx.upload(&v, &shape)?;
    let t = ctx.upload_labels(&c.labels, &c.target_shape())?;
    let out = c
        .loss
        .compute_class_sharded(ctx, &x, &t, off, coll, &GradOpts::default())?;
    Ok(read(ctx, &out))
}

#[test]
fn class_sharded_agrees_with_the_unsharded_loss_on_worlds_of_one_to_four() {
    let ctx = common::ctx();
    let cases = cases(0xc1a5);
    let whole: Vec<Got> = cases.iter().map(|c| unsharded(ctx, c)).collect();
    for k in 1..=4 {
        let sl = slices(k);
        let results = world(k, |ctx, m| {
            cases
                .iter()
                .map(|c| {
                    rank_run(ctx, c, m, sl[m.rank()])
                        .unwrap_or_else(|e| panic!("{}: rank {}: {e}", c.name, m.rank()))
                })
                .collect::<Vec<_>>()
        });
        for (i, (c, want)) in cases.iter().zip(&whole).enumerate() {
            let what = format!("{} {:?} (world {k})", c.name, c.shape);
            for (r, per_case) in results.iter().enumerate() {
                let got = &per_case[i];
                common::close_to_max(
                    &format!("{what} rank {r} loss"),
                    &got.loss,
                    &want.loss,
                    1e-6,
                );
                // Every rank holds the same value, bit for bit.
                assert_eq!(got.loss, results[0][i].loss, "{what}: rank {r} value");
                let (off, cnt) = sl[r];
                let want_g = slice_classes(&want.grad, c.shape[0], c.inner(), off, cnt);
                let scale = want.grad.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, (g, w)) in got.grad.iter().zip(&want_g).enumerate() {
                    assert!(
                        (g - w).abs() <= 2e-6 * scale,
                        "{what} rank {r} grad[{j}]: {g} vs {w} (scale {scale})"
                    );
                }
                assert_eq!(got.grad.len(), want_g.len(), "{what}: gradient length");
            }
        }
    }
}

#[test]
fn class_sharded_is_bit_identical_from_run_to_run() {
    let cases = cases(0xd37e);
    let sl = slices(3);
    let run = || {
        world(3, |ctx, m| {
            cases
                .iter()
                .map(|c| rank_run(ctx, c, m, sl[m.rank()]).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let a = run();
    let b = run();
    for (r, (x, y)) in a.iter().zip(&b).enumerate() {
        for (i, (g, h)) in x.iter().zip(y).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g.loss), bits(&h.loss), "rank {r} case {i} value");
            assert_eq!(bits(&g.grad), bits(&h.grad), "rank {r} case {i} gradient");
        }
    }
}

/// The upstream scale and accumulation into the caller's gradient.
#[test]
fn class_sharded_scales_and_accumulates() {
    let ctx = common::ctx();
    let c = &cases(0x5ca1)[0];
    let want = unsharded(ctx, c);
    let sl = slices(2);
    let got = world(2, |ctx, m| {
        let (off, cnt) = sl[m.rank()];
        let (v, shape) = c.slice(off, cnt);
        let x = ctx.upload(&v, &shape).unwrap();
        let t = ctx.upload_labels(&c.labels, &c.target_shape()).unwrap();
        let g0 = ctx.upload(&vec![1.0; v.len()], &shape).unwrap();
        let opts = GradOpts {
            scale: 2.0,
            into: vec![Some(g0)],
            accumulate: true,
        };
        let out = c
            .loss
            .compute_class_sharded(ctx, &x, &t, off, m, &opts)
            .unwrap();
        read(ctx, &out)
    });
    for (r, g) in got.iter().enumerate() {
        let (off, cnt) = sl[r];
        let want_g: Vec<f32> = slice_classes(&want.grad, c.shape[0], c.inner(), off, cnt)
            .iter()
            .map(|v| 1.0 + 2.0 * v)
            .collect();
        common::close_to_max(&format!("rank {r} value"), &g.loss, &want.loss, 1e-6);
        common::close_to_max(&format!("rank {r} gradient"), &g.grad, &want_g, 2e-6);
    }
}

/// Runs one bad setup on a world of `k`: `(off, cnt)` per rank and a per-rank label edit.
fn errors_of(
    k: usize,
    sl: &[(usize, usize)],
    loss: &CrossEntropyLoss,
    labels: impl Fn(usize) -> Vec<i32> + Sync,
) -> Vec<Error> {
    world(k, |ctx, m| {
        let r = m.rank();
        let (off, cnt) = sl[r];
        let l = labels(r);
        let x = ctx
            .upload(&vec![0.5; l.len() * cnt], &[l.len(), cnt])
            .unwrap();
        let t = ctx.upload_labels(&l, &[l.len()]).unwrap();
        loss.compute_class_sharded(ctx, &x, &t, off, m, &GradOpts::default())
            .map(|_| ())
            .expect_err("bad input must fail on every rank")
    })
}

#[test]
fn bad_slices_and_labels_are_errors_on_every_rank() {
    let labels = |_: usize| vec![0, 1, 2, 3];
    let ce = CrossEntropyLoss::default();
    // Overlapping slices.
    for e in errors_of(2, &[(0, 4), (3, 4)], &ce, labels) {
        assert!(e.to_string().contains("overlap"), "{e}");
        assert_eq!(e.error_kind(), ErrorKind::InvalidInput);
    }
    // A gap.
    for e in errors_of(3, &[(0, 2), (5, 2), (2, 2)], &ce, labels) {
        assert!(e.to_string().contains("gap"), "{e}");
    }
    // Slices that do not start at 0.
    for e in errors_of(2, &[(1, 3), (4, 3)], &ce, labels) {
        assert!(e.to_string().contains("gap"), "{e}");
    }
    // A label no rank owns (7 classes in all).
    let out_of_range = |_: usize| vec![0, 7, 2, 3];
    for e in errors_of(2, &[(0, 5), (5, 2)], &ce, out_of_range) {
        assert!(matches!(e, Error::LabelOutOfRange(_)), "{e}");
    }
    let negative = |_: usize| vec![0, 1, -3, 3];
    for e in errors_of(3, &[(0, 1), (1, 5), (6, 1)], &ce, negative) {
        assert!(matches!(e, Error::LabelOutOfRange(_)), "{e}");
    }
    // ignore_index is not an error, wherever it lies.
    let ignored = |_: usize| vec![0, -100, 2, 3];
    world(2, |ctx, m| {
        let (off, cnt) = [(0, 5), (5, 2)][m.rank()];
        let x = ctx.upload(&vec![0.5; 4 * cnt], &[4, cnt]).unwrap();
        let t = ctx.upload_labels(&ignored(0), &[4]).unwrap();
        ce.compute_class_sharded(ctx, &x, &t, off, m, &GradOpts::default())
            .unwrap();
    });
    // Ranks that hold different labels.
    let differ = |r: usize| {
        if r == 1 {
            vec![0, 1, 2, 4]
        } else {
            vec![0, 1, 2, 3]
        }
    };
    for e in errors_of(2, &[(0, 5), (5, 2)], &ce, differ) {
        assert!(e.to_string().contains("different labels"), "{e}");
    }
    // A weight vector that is not of length C_total.
    let w = CrossEntropyLoss {
        weight: Some(HostTensor::new(vec![1.0; 5], vec![5]).unwrap()),
        ..Default::default()
    };
    for e in errors_of(2, &[(0, 5), (5, 2)], &w, labels) {
        assert!(e.to_string().contains("C_total = 7"), "{e}");
    }
}

#[test]
fn a_rank_that_refuses_its_input_fails_every_rank() {
    let ce = CrossEntropyLoss::default();
    let errs = world(3, |ctx, m| {
        let r = m.rank();
        let (off, cnt) = [(0, 2), (2, 2), (4, 3)][r];
        // Rank 1's labels have the wrong shape.
        let n = if r == 1 { 3 } else { 4 };
        let x = ctx.upload(&vec![0.5; 4 * cnt], &[4, cnt]).unwrap();
        let t = ctx.upload_labels(&vec![0; n], &[n]).unwrap();
        ce.compute_class_sharded(ctx, &x, &t, off, m, &GradOpts::default())
            .map(|_| ())
            .expect_err("must fail")
    });
    assert!(matches!(errs[1], Error::ShapeMismatch(_)), "{}", errs[1]);
    for r in [0, 2] {
        assert!(errs[r].to_string().contains("rank(s) 1"), "{}", errs[r]);
    }
    // A config that differs on one rank.
    let errs = world(2, |ctx, m| {
        let (off, cnt) = [(0, 3), (3, 4)][m.rank()];
        let loss = CrossEntropyLoss {
            label_smoothing: if m.rank() == 0 { 0.1 } else { 0.0 },
            ..Default::default()
        };
        let x = ctx.upload(&vec![0.5; 4 * cnt], &[4, cnt]).unwrap();
        let t = ctx.upload_labels(&[0, 1, 2, 3], &[4]).unwrap();
        loss.compute_class_sharded(ctx, &x, &t, off, m, &GradOpts::default())
            .map(|_| ())
            .expect_err("must fail")
    });
    for e in errs {
        assert_eq!(e.error_kind(), ErrorKind::InvalidConfig, "{e}");
    }
}

/// A borrowed rank, to wrap in [`Metered`].
struct Ref<'a>(&'a ThreadRank);

impl Collective for Ref<'_> {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn all_reduce(&self, data: &mut [f64], op: deepml::shard::ReduceOp) -> Result<()> {
        self.0.all_reduce(data, op)
    }
}

/// The all-reduces of one step: `8 (10 + 3 k)` bytes of agreement, `8 (P + 1)` of maxima and
/// `16 P` of sums (`24 P` with label smoothing), in three all-reduces.
#[test]
fn class_sharded_traffic_per_step() {
    for (ls, per) in [(0.0, 16u64), (0.1, 24)] {
        let loss = CrossEntropyLoss {
            label_smoothing: ls,
            ..Default::default()
        };
        let (n, k) = (5usize, 4usize);
        let p = (n * k) as u64;
        let sl = [(0usize, 4usize), (4, 3)];
        let got = world(2, |ctx, m| {
            let m = Metered::new(Ref(m));
            let (off, cnt) = sl[m.rank()];
            let x = ctx.upload(&vec![0.25; n * cnt * k], &[n, cnt, k]).unwrap();
            let t = ctx.upload_labels(&vec![1; n * k], &[n, k]).unwrap();
            loss.compute_class_sharded(ctx, &x, &t, off, &m, &GradOpts::default())
                .unwrap();
            m.take()
        });
        for (bytes, calls) in got {
            assert_eq!(calls, 3);
            assert_eq!(bytes, 8 * (10 + 3 * 2) + 8 * (p + 1) + per * p);
        }
    }
}

/// An unbatched input `[C_r]` with a scalar label.
#[test]
fn class_sharded_unbatched_input() {
    let ctx = common::ctx();
    let logits: Vec<f32> = vec![0.3, -1.2, 2.5, 0.0, 1.1, -0.7, 0.9];
    let loss = CrossEntropyLoss {
        label_smoothing: 0.05,
        ..Default::default()
    };
    let x = ctx.upload(&logits, &[C]).unwrap();
    let t = ctx.upload_labels(&[4], &[]).unwrap();
    let want = read(ctx, &loss.compute(ctx, &[&x, &t]).unwrap());
    let sl = slices(3);
    let got = world(3, |ctx, m| {
        let (off, cnt) = sl[m.rank()];
        let x = ctx.upload(&logits[off..off + cnt], &[cnt]).unwrap();
        let t = ctx.upload_labels(&[4], &[]).unwrap();
        let out = loss
            .compute_class_sharded(ctx, &x, &t, off, m, &GradOpts::default())
            .unwrap();
        read(ctx, &out)
    });
    for (r, g) in got.iter().enumerate() {
        let (off, cnt) = sl[r];
        common::close_to_max(&format!("rank {r} value"), &g.loss, &want.loss, 1e-6);
        common::close_to_max(
            &format!("rank {r} gradient"),
            &g.grad,
            &want.grad[off..off + cnt],
            2e-6,
        );
    }
}

/// With `check_finite`, a NaN or infinite logit on one rank is an error on every rank.
#[test]
fn non_finite_logits_on_one_rank_fail_every_rank() {
    let ce = CrossEntropyLoss::default();
    let members = ThreadGroup::new(2);
    let errs: Vec<Error> = std::thread::scope(|sc| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|m| {
                let ce = &ce;
                sc.spawn(move || {
                    let ctx = LossContext::with_options(ContextOptions {
                        check_finite: true,
                        ..Default::default()
                    })
                    .unwrap();
                    let (off, cnt) = [(0, 3), (3, 4)][m.rank()];
                    let mut v = vec![0.5; 4 * cnt];
                    if m.rank() == 1 {
                        v[5] = f32::INFINITY;
                    }
                    let x = ctx.upload(&v, &[4, cnt]).unwrap();
                    let t = ctx.upload_labels(&[0, 1, 2, 3], &[4]).unwrap();
                    ce.compute_class_sharded(&ctx, &x, &t, off, &m, &GradOpts::default())
                        .map(|_| ())
                        .expect_err("must fail")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        errs[1].to_string().contains("NaN or infinity"),
        "{}",
        errs[1]
    );
    assert!(errs[0].to_string().contains("statistics"), "{}", errs[0]);
}

/// Runs `f` on every rank of a world of `k` threads, each with its own context.
fn world<T: Send>(k: usize, f: impl Fn(&LossContext, &ThreadRank) -> T + Sync) -> Vec<T> {
    common::on_world(k, |_, m| {
        let ctx = LossContext::new().unwrap();
        f(&ctx, m)
    })
}
