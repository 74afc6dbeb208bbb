//! Scale-out (`deepml::shard`): every loss, with its batch split across worlds of 1 to 4 ranks
//! of an in-process thread group (each rank its own `LossContext`, its own device), agrees with
//! the unsharded loss of the whole batch; a world of one is bit-identical to it; a world of k
//! is bit-identical from run to run; bad input on one rank is an error on every rank.

mod common;

use deepml::shard::{Collective, ReduceOp, ThreadGroup, WorldOfOne};
use deepml::*;
use rand::Rng;

/// One input of a setup: its whole-batch shape and values (class labels as i32 where `labels`).
#[derive(Clone)]
struct Input {
    shape: Vec<usize>,
    data: Vec<f32>,
    labels: bool,
    /// Split along dimension 0 (else every rank holds it whole).
    batched: bool,
}

type MakeLoss = Box<dyn Fn() -> Box<dyn LossDyn> + Send + Sync>;

/// A loss or a combined loss, behind one interface for the test.
trait LossDyn {
    fn run(
        &self,
        ctx: &LossContext,
        ins: &[&Tensor],
        coll: Option<&dyn Collective>,
    ) -> Result<LossOutput>;
}

impl<L: Loss> LossDyn for L {
    fn run(
        &self,
        ctx: &LossContext,
        ins: &[&Tensor],
        coll: Option<&dyn Collective>,
    ) -> Result<LossOutput> {
        match coll {
            Some(c) => self.compute_sharded(ctx, ins, c, &GradOpts::default()),
            None => self.compute(ctx, ins),
        }
    }
}

struct CombinedDyn(Combined);

impl LossDyn for CombinedDyn {
    fn run(
        &self,
        ctx: &LossContext,
        ins: &[&Tensor],
        coll: Option<&dyn Collective>,
    ) -> Result<LossOutput> {
        match coll {
            Some(c) => self.0.compute_sharded(ctx, ins, c, &GradOpts::default()),
            None => self.0.compute(ctx, ins),
        }
    }
}

struct Setup {
    name: &'static str,
    make: MakeLoss,
    inputs: Vec<Input>,
}

const N: usize = 9;

fn floats(rng: &mut rand::rngs::SmallRng, shape: &[usize], lo: f32, hi: f32) -> Input {
    let n = shape.iter().product();
    Input {
        shape: shape.to_vec(),
        data: common::uniform(rng, n, lo, hi),
        labels: false,
        batched: true,
    }
}

fn labels(rng: &mut rand::rngs::SmallRng, shape: &[usize], classes: i32) -> Input {
    let n = shape.iter().product();
    Input {
        shape: shape.to_vec(),
        data: (0..n).map(|_| rng.gen_range(0..classes) as f32).collect(),
        labels: true,
        batched: true,
    }
}

fn binary(rng: &mut rand::rngs::SmallRng, shape: &[usize]) -> Input {
    let n = shape.iter().product();
    Input {
        shape: shape.to_vec(),
        data: (0..n).map(|_| rng.gen_range(0..2) as f32).collect(),
        labels: false,
        batched: true,
    }
}

/// One-hot soft targets `[N, C, K]` of random classes.
fn one_hot(rng: &mut rand::rngs::SmallRng, n: usize, c: usize, k: usize) -> Input {
    let mut data = vec![0.0; n * c * k];
    for i in 0..n {
        for p in 0..k {
            data[(i * c + rng.gen_range(0..c)) * k + p] = 1.0;
        }
    }
    Input {
        shape: vec![n, c, k],
        data,
        labels: false,
        batched: true,
    }
}

fn boxed<L: Loss + 'static>(l: L) -> Box<dyn LossDyn> {
    Box::new(l)
}

fn setups(seed: u64) -> Vec<Setup> {
    let mut r = common::rng(seed);
    let rng = &mut r;
    let weights = vec![0.5, 2.0, 1.0, 1.5, 0.25];
    let ce_weighted = move || CrossEntropyLoss {
        weight: Some(HostTensor::new(weights.clone(), vec![5]).unwrap()),
        ignore_index: 3,
        label_smoothing: 0.1,
        ..Default::default()
    };
    vec![
        Setup {
            name: "Jaccard binary",
            make: Box::new(|| boxed(JaccardLoss::binary())),
            inputs: vec![
                floats(rng, &[N, 1, 5, 7], -3.0, 3.0),
                binary(rng, &[N, 1, 5, 7]),
            ],
        },
        Setup {
            name: "Jaccard multiclass per class",
            make: Box::new(|| boxed(JaccardLoss::multiclass().per_class(true))),
            inputs: vec![floats(rng, &[N, 4, 15], -3.0, 3.0), one_hot(rng, N, 4, 15)],
        },
        Setup {
            name: "Dice multiclass per class, smooth",
            make: Box::new(|| boxed(DiceLoss::multiclass().per_class(true).smooth(1.0))),
            inputs: vec![floats(rng, &[N, 3, 16], -3.0, 3.0), one_hot(rng, N, 3, 16)],
        },
        Setup {
            name: "Dice binary",
            make: Box::new(|| boxed(DiceLoss::binary())),
            inputs: vec![
                floats(rng, &[N, 33], -3.0, 3.0),
                floats(rng, &[N, 33], 0.0, 1.0),
            ],
        },
        Setup {
            name: "RMSE",
            make: Box::new(|| boxed(RMSELoss::default())),
            inputs: vec![
                floats(rng, &[N, 13], -2.0, 2.0),
                floats(rng, &[N, 13], -2.0, 2.0),
            ],
        },
        Setup {
            name: "MSE mean",
            make: Box::new(|| boxed(MSELoss::default())),
            inputs: vec![
                floats(rng, &[N, 3, 5], -2.0, 2.0),
                floats(rng, &[N, 3, 5], -2.0, 2.0),
            ],
        },
        Setup {
            name: "L1 sum",
            make: Box::new(|| {
                boxed(L1Loss {
                    reduction: Reduction::Sum,
                })
            }),
            inputs: vec![
                floats(rng, &[N, 7], -2.0, 2.0),
                floats(rng, &[N, 7], -2.0, 2.0),
            ],
        },
        Setup {
            name: "MSE none",
            make: Box::new(|| {
                boxed(MSELoss {
                    reduction: Reduction::None,
                })
            }),
            inputs: vec![
                floats(rng, &[N, 4], -2.0, 2.0),
                floats(rng, &[N, 4], -2.0, 2.0),
            ],
        },
        Setup {
            name: "WeightedBCEWithLogits",
            make: Box::new(|| {
                boxed(WeightedBCEWithLogitsLoss {
                    w_p: 2.0,
                    w_n: 0.5,
                    ..Default::default()
                })
            }),
            inputs: vec![floats(rng, &[N], -4.0, 4.0), binary(rng, &[N])],
        },
        Setup {
            name: "BCEWithLogits pos_weight",
            make: Box::new(|| {
                boxed(BCEWithLogitsLoss {
                    pos_weight: Some(
                        HostTensor::new(vec![1.0, 2.0, 0.5, 3.0, 1.0, 0.2], vec![6]).unwrap(),
                    ),
                    ..Default::default()
                })
            }),
            inputs: vec![
                floats(rng, &[N, 6], -4.0, 4.0),
                floats(rng, &[N, 6], 0.0, 1.0),
            ],
        },
        Setup {
            name: "CrossEntropy weighted, ignore_index, smoothing [N, C, H, W]",
            make: Box::new(move || boxed(ce_weighted())),
            inputs: vec![
                floats(rng, &[N, 5, 3, 4], -3.0, 3.0),
                labels(rng, &[N, 3, 4], 5),
            ],
        },
        Setup {
            name: "CrossEntropy [N, C]",
            make: Box::new(|| boxed(CrossEntropyLoss::default())),
            inputs: vec![floats(rng, &[N, 10], -3.0, 3.0), labels(rng, &[N], 10)],
        },
        Setup {
            name: "Contrastive",
            make: Box::new(|| boxed(ContrastiveLoss::default())),
            inputs: vec![
                floats(rng, &[N, 16], -1.0, 1.0),
                floats(rng, &[N, 16], -1.0, 1.0),
                binary(rng, &[N]),
            ],
        },
        Setup {
            name: "ArcFace (weight replicated)",
            make: Box::new(|| boxed(AngularPenaltySMConfig::arcface(8, 12))),
            inputs: vec![
                floats(rng, &[N, 8], -1.0, 1.0),
                labels(rng, &[N], 12),
                Input {
                    batched: false,
                    ..floats(rng, &[12, 8], -0.4, 0.4)
                },
            ],
        },
        Setup {
            name: "Focal binary",
            make: Box::new(|| boxed(FocalLoss::binary())),
            inputs: vec![
                floats(rng, &[N, 1, 20], -3.0, 3.0),
                binary(rng, &[N, 1, 20]),
            ],
        },
        Setup {
            name: "Focal multiclass normalized",
            make: Box::new(|| boxed(FocalLoss::multiclass().normalized(true))),
            inputs: vec![floats(rng, &[N, 3, 8], -3.0, 3.0), labels(rng, &[N, 8], 3)],
        },
        Setup {
            name: "Tversky multiclass",
            make: Box::new(|| boxed(TverskyLoss::multiclass().alpha(0.3).beta(0.7))),
            inputs: vec![floats(rng, &[N, 4, 8], -3.0, 3.0), labels(rng, &[N, 8], 4)],
        },
        Setup {
            name: "Combined: Dice per class + weighted CE",
            make: Box::new(|| {
                Box::new(CombinedDyn(
                    Combined::new()
                        .term(1.0, DiceLoss::multiclass().per_class(true), &[0, 1])
                        .term(
                            0.5,
                            CrossEntropyLoss {
                                weight: Some(
                                    HostTensor::new(vec![1.0, 3.0, 0.5, 2.0], vec![4]).unwrap(),
                                ),
                                ..Default::default()
                            },
                            &[0, 2],
                        ),
                ))
            }),
            inputs: {
                let t = labels(rng, &[N, 12], 4);
                let mut oh = vec![0.0; N * 4 * 12];
                for i in 0..N {
                    for p in 0..12 {
                        oh[(i * 4 + t.data[i * 12 + p] as usize) * 12 + p] = 1.0;
                    }
                }
                vec![
                    floats(rng, &[N, 4, 12], -3.0, 3.0),
                    Input {
                        shape: vec![N, 4, 12],
                        data: oh,
                        labels: false,
                        batched: true,
                    },
                    t,
                ]
            },
        },
        Setup {
            name: "Combined: Jaccard + BCE + MSE (gradients in both phases)",
            make: Box::new(|| {
                Box::new(CombinedDyn(
                    Combined::new()
                        .term(0.5, JaccardLoss::binary(), &[0, 1])
                        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
                        .term(0.25, MSELoss::default(), &[0, 1]),
                ))
            }),
            inputs: vec![
                floats(rng, &[N, 1, 12], -3.0, 3.0),
                binary(rng, &[N, 1, 12]),
            ],
        },
    ]
}

/// Rows `[a, b)` of an input (the whole input when it is not batched).
fn upload(ctx: &LossContext, inp: &Input, a: usize, b: usize) -> Tensor {
    if !inp.batched {
        return ctx.upload(&inp.data, &inp.shape).unwrap();
    }
    let per: usize = inp.shape[1..].iter().product();
    let mut shape = inp.shape.clone();
    shape[0] = b - a;
    let data = &inp.data[a * per..b * per];
    if inp.labels {
        let l: Vec<i32> = data.iter().map(|&v| v as i32).collect();
        ctx.upload_labels(&l, &shape).unwrap()
    } else {
        ctx.upload(data, &shape).unwrap()
    }
}

/// The loss (every value) and the gradients of one run.
#[derive(Clone, Debug, PartialEq)]
struct Got {
    loss: Vec<f32>,
    grads: Vec<(Option<usize>, Vec<f32>)>,
}

fn read(ctx: &LossContext, out: &LossOutput) -> Got {
    Got {
        loss: ctx.read(&out.loss).unwrap(),
        grads: out
            .grads
            .iter()
            .zip(&out.grad_inputs)
            .map(|(g, &i)| (i, ctx.read(g).unwrap()))
            .collect(),
    }
}

fn run_rank(
    ctx: &LossContext,
    s: &Setup,
    coll: Option<&dyn Collective>,
    a: usize,
    b: usize,
) -> Result<Got> {
    let ins: Vec<Tensor> = s.inputs.iter().map(|i| upload(ctx, i, a, b)).collect();
    let refs: Vec<&Tensor> = ins.iter().collect();
    let out = (s.make)().run(ctx, &refs, coll)?;
    Ok(read(ctx, &out))
}

/// Row ranges of `k` shards of N rows: odd sizes, one of them empty from k = 3 on.
fn shards(k: usize) -> Vec<(usize, usize)> {
    let sizes: &[usize] = match k {
        1 => &[N],
        2 => &[6, 3],
        3 => &[4, 0, 5],
        4 => &[2, 3, 0, 4],
        _ => unreachable!(),
    };
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            at += n;
            (at - n, at)
        })
        .collect()
}

/// Runs every setup on a world of `k` threads (each with its own context), returning each
/// setup's per-rank results.
fn world(setups: &[Setup], k: usize) -> Vec<Vec<Got>> {
    let ranges = shards(k);
    let per_rank: Vec<Vec<Got>> = common::on_world(k, |r, m| {
        let ctx = LossContext::new().unwrap();
        let (a, b) = ranges[r];
        setups
            .iter()
            .map(|s| {
                run_rank(&ctx, s, Some(m), a, b)
                    .unwrap_or_else(|e| panic!("{}: rank {r}: {e}", s.name))
            })
            .collect()
    });
    (0..setups.len())
        .map(|i| per_rank.iter().map(|r| r[i].clone()).collect())
        .collect()
}

/// Worlds of 1, 2, 3 and 4: the loss of the whole batch on every rank, each rank's gradient
/// rows, and the replicated weight's summed gradient, against the unsharded run.
#[test]
fn every_loss_agrees_with_the_unsharded_batch_on_worlds_of_one_to_four() {
    let ctx = common::ctx();
    let setups = setups(0x5a4d);
    let whole: Vec<Got> = setups
        .iter()
        .map(|s| run_rank(ctx, s, None, 0, N).unwrap())
        .collect();
    for k in 1..=4 {
        let ranges = shards(k);
        let results = world(&setups, k);
        for ((s, want), per_rank) in setups.iter().zip(&whole).zip(&results) {
            let what = format!("{} (world {k})", s.name);
            for (r, got) in per_rank.iter().enumerate() {
                let (a, b) = ranges[r];
                if want.loss.len() == 1 {
                    common::close_to_max(
                        &format!("{what} rank {r} loss"),
                        &got.loss,
                        &want.loss,
                        1e-6,
                    );
                } else {
                    // `none`: this rank's rows of the per-element losses.
                    let per = want.loss.len() / N;
                    common::close_to_max(
                        &format!("{what} rank {r} loss rows"),
                        &got.loss,
                        &want.loss[a * per..b * per],
                        1e-6,
                    );
                }
                for ((gi, g), (_, w)) in got.grads.iter().zip(&want.grads) {
                    match gi {
                        Some(i) if s.inputs[*i].batched => {
                            let per = w.len() / N;
                            common::close_to_max(
                                &format!("{what} rank {r} grad of input {i}"),
                                g,
                                &w[a * per..b * per],
                                2e-6,
                            );
                        }
                        _ => common::close_to_max(
                            &format!("{what} rank {r} replicated grad"),
                            g,
                            w,
                            2e-6,
                        ),
                    }
                }
            }
        }
        eprintln!("world of {k}: {} setups agree", setups.len());
    }
}

/// A world of one is the unsharded path bit for bit; a world of three (with an empty shard)
/// gives the same bits from run to run.
#[test]
fn a_world_of_one_is_bit_identical_and_worlds_are_deterministic() {
    let ctx = common::ctx();
    let setups = setups(0xbeef);
    for s in &setups {
        let want = run_rank(ctx, s, None, 0, N).unwrap();
        let got = run_rank(ctx, s, Some(&WorldOfOne), 0, N).unwrap();
        let bits = |g: &Got| -> Vec<u32> {
            g.loss
                .iter()
                .chain(g.grads.iter().flat_map(|(_, v)| v.iter()))
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want), "{}: world of one", s.name);
    }
    let first = world(&setups, 3);
    let again = world(&setups, 3);
    for ((s, a), b) in setups.iter().zip(&first).zip(&again) {
        for (r, (x, y)) in a.iter().zip(b).enumerate() {
            let bits = |g: &Got| -> Vec<u32> {
                g.loss
                    .iter()
                    .chain(g.grads.iter().flat_map(|(_, v)| v.iter()))
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(x), bits(y), "{} rank {r}: run to run", s.name);
        }
    }
}

fn kinds(results: &[Result<LossOutput>]) -> Vec<String> {
    results
        .iter()
        .map(|r| match r {
            Ok(_) => "ok".to_string(),
            // The variant's name.
            Err(e) => format!("{e:?}").split('(').next().unwrap_or("").to_string(),
        })
        .collect()
}

/// Ranks that disagree on the loss, its config or the statistics' shapes, a bad input or label
/// on one rank, and an all-empty batch: every rank returns an error, none hangs.
#[test]
fn bad_input_on_one_rank_is_an_error_on_every_rank() {
    let ctx = common::ctx();
    let mut rng = common::rng(7);
    let x = ctx
        .upload(&common::uniform(&mut rng, 4 * 3 * 8, -2.0, 2.0), &[4, 3, 8])
        .unwrap();
    let t = ctx
        .upload(&common::uniform(&mut rng, 4 * 3 * 8, 0.0, 1.0), &[4, 3, 8])
        .unwrap();
    let x4 = ctx
        .upload(&common::uniform(&mut rng, 4 * 4 * 8, -2.0, 2.0), &[4, 4, 8])
        .unwrap();
    let t4 = ctx
        .upload(&common::uniform(&mut rng, 4 * 4 * 8, 0.0, 1.0), &[4, 4, 8])
        .unwrap();
    let t_bad = ctx
        .upload(&common::uniform(&mut rng, 4 * 3 * 7, 0.0, 1.0), &[4, 3, 7])
        .unwrap();
    let opts = GradOpts::default();

    // Another config on rank 1.
    let r = common::on_world(2, |rank, m| {
        let eps = if rank == 1 { 1e-5 } else { 1e-7 };
        JaccardLoss::multiclass()
            .eps(eps)
            .compute_sharded(ctx, &[&x, &t], m, &opts)
    });
    assert_eq!(kinds(&r), ["InvalidConfig", "InvalidConfig"], "config");
    // Another loss on rank 0.
    let r = common::on_world(2, |rank, m| {
        if rank == 0 {
            MSELoss::default().compute_sharded(ctx, &[&x, &t], m, &opts)
        } else {
            L1Loss::default().compute_sharded(ctx, &[&x, &t], m, &opts)
        }
    });
    assert_eq!(kinds(&r), ["InvalidConfig", "InvalidConfig"], "loss");
    // Per-class statistics of another length (4 classes on rank 2).
    let r = common::on_world(3, |rank, m| {
        let (a, b) = if rank == 2 { (&x4, &t4) } else { (&x, &t) };
        DiceLoss::multiclass()
            .per_class(true)
            .compute_sharded(ctx, &[a, b], m, &opts)
    });
    assert_eq!(kinds(&r), ["InvalidConfig"; 3], "statistics' length");
    // A target with other rows than the output on rank 1 (refused before the header): its
    // own error there, a clear one elsewhere.
    let t_short = ctx.empty(&[3, 3, 8], DType::F32).unwrap();
    let r = common::on_world(3, |rank, m| {
        let b = if rank == 1 { &t_short } else { &t };
        MSELoss::default().compute_sharded(ctx, &[&x, b], m, &opts)
    });
    assert_eq!(
        kinds(&r),
        ["InvalidInput", "ShapeMismatch", "InvalidInput"],
        "rows"
    );
    let msg = r[0].as_ref().unwrap_err().to_string();
    assert!(msg.contains("rank(s) 1"), "{msg}");
    // A gradient buffer of the wrong shape on rank 2 (refused while recording).
    let wrong = GradOpts {
        into: vec![Some(t_bad.clone())],
        ..Default::default()
    };
    let r = common::on_world(3, |rank, m| {
        let o = if rank == 2 { &wrong } else { &opts };
        MSELoss::default().compute_sharded(ctx, &[&x, &t], m, o)
    });
    assert_eq!(
        kinds(&r),
        ["InvalidInput", "InvalidInput", "ShapeMismatch"],
        "recording"
    );
    let msg = r[1].as_ref().unwrap_err().to_string();
    assert!(msg.contains("rank(s) 2"), "{msg}");
    // A target of another shape past dimension 0 on rank 1: the ranks disagree.
    let r = common::on_world(2, |rank, m| {
        let b = if rank == 1 { &t_bad } else { &t };
        MSELoss::default().compute_sharded(ctx, &[&x, b], m, &opts)
    });
    assert_eq!(kinds(&r), ["InvalidConfig", "InvalidConfig"], "shapes");
    // A label out of range on the device of rank 0 only.
    let good = ctx.upload_labels(&[0, 1, 2, 1], &[4]).unwrap();
    let bad = ctx.upload_labels(&[0, 7, 2, 1], &[4]).unwrap();
    let logits = ctx
        .upload(&common::uniform(&mut rng, 12, -2.0, 2.0), &[4, 3])
        .unwrap();
    let r = common::on_world(2, |rank, m| {
        let l = if rank == 0 { &bad } else { &good };
        CrossEntropyLoss::default().compute_sharded(ctx, &[&logits, l], m, &opts)
    });
    assert_eq!(kinds(&r), ["LabelOutOfRange", "LabelOutOfRange"], "label");
    // Every shard empty.
    let ex = ctx.empty(&[0, 3, 8], DType::F32).unwrap();
    let r = common::on_world(2, |_, m| {
        MSELoss::default().compute_sharded(ctx, &[&ex, &ex], m, &opts)
    });
    assert_eq!(kinds(&r), ["EmptyInput", "EmptyInput"], "all empty");
}

/// The thread group itself: sums in rank order, refuses mismatched calls on every rank, and a
/// rank that leaves makes the others fail instead of waiting forever.
#[test]
fn the_thread_group_detects_mismatches_and_departures() {
    let sums = common::on_world(3, |rank, m| {
        let mut v = vec![rank as f64, 1.0, -(rank as f64)];
        m.all_reduce(&mut v, ReduceOp::Sum).map(|_| v)
    });
    for s in &sums {
        assert_eq!(s.as_ref().unwrap(), &vec![3.0, 3.0, -3.0]);
    }
    let maxes = common::on_world(2, |rank, m| {
        let mut v = vec![rank as f64, -(rank as f64)];
        m.all_reduce(&mut v, ReduceOp::Max).map(|_| v)
    });
    assert_eq!(maxes[0].as_ref().unwrap(), &vec![1.0, 0.0]);
    let bad = common::on_world(2, |rank, m| {
        let mut v = vec![0.0; 2 + rank];
        m.all_reduce(&mut v, ReduceOp::Sum)
    });
    assert!(bad.iter().all(|r| r.is_err()), "lengths");
    let members = ThreadGroup::new(2);
    let mut it = members.into_iter();
    let (a, b) = (it.next().unwrap(), it.next().unwrap());
    let waiter = std::thread::spawn(move || {
        let mut v = vec![1.0];
        a.all_reduce(&mut v, ReduceOp::Sum)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(b);
    let e = waiter.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("left"), "{e}");
}

/// PartialFC: the classes of the angular losses split across worlds of 1 to 4 ranks (uneven
/// slices, in any order), every rank holding the whole batch: the value and the gradient of
/// `x` of the unsharded loss on every rank, each rank's slice of the weight's gradient.
#[test]
fn class_sharded_angular_losses_agree_with_the_whole_weight() {
    let ctx = common::ctx();
    let mut rng = common::rng(0xfc);
    let (n, d, c) = (13usize, 24usize, 37usize);
    let x = common::uniform(&mut rng, n * d, -1.0, 1.0);
    let y: Vec<i32> = (0..n).map(|_| rng.gen_range(0..c as i32)).collect();
    let w = common::uniform(&mut rng, c * d, -0.3, 0.3);
    let configs = [
        AngularPenaltySMConfig::arcface(d, c),
        AngularPenaltySMConfig::cosface(d, c),
        AngularPenaltySMConfig {
            reduction: Reduction::Sum,
            normalize_weight: false,
            ..AngularPenaltySMConfig::sphereface(d, c)
        },
    ];
    let xt = ctx.upload(&x, &[n, d]).unwrap();
    let yt = ctx.upload_labels(&y, &[n]).unwrap();
    let wt = ctx.upload(&w, &[c, d]).unwrap();
    // Slices (offset, count) of each rank: uneven, one of a single class, not in rank order.
    let layouts: [&[(usize, usize)]; 4] = [
        &[(0, 37)],
        &[(20, 17), (0, 20)],
        &[(0, 1), (1, 30), (31, 6)],
        &[(10, 9), (0, 10), (30, 7), (19, 11)],
    ];
    // ArcFace on every world; CosFace and SphereFace (sum, unnormalised weight) on one each.
    // For each world, the configs it runs (one context a rank for all of them).
    let runs: [&[usize]; 4] = [&[0], &[0], &[0, 1], &[0, 2]];
    let wants: Vec<Got> = configs
        .iter()
        .map(|cfg| read(ctx, &cfg.compute(ctx, &[&xt, &yt, &wt]).unwrap()))
        .collect();
    for (slices, cfgs) in layouts.iter().zip(runs) {
        let k = slices.len();
        let got = common::on_world(k, |rank, m| {
            let ctx = LossContext::new().unwrap();
            let (o, cnt) = slices[rank];
            let xt = ctx.upload(&x, &[n, d]).unwrap();
            let yt = ctx.upload_labels(&y, &[n]).unwrap();
            let wt = ctx.upload(&w[o * d..(o + cnt) * d], &[cnt, d]).unwrap();
            cfgs.iter()
                .map(|&ci| {
                    let local = AngularPenaltySMConfig {
                        out_features: cnt,
                        ..configs[ci].clone()
                    };
                    let out = local
                        .compute_class_sharded(&ctx, &xt, &yt, &wt, o, m, &GradOpts::default())
                        .unwrap();
                    read(&ctx, &out)
                })
                .collect::<Vec<_>>()
        });
        for (rank, per_cfg) in got.iter().enumerate() {
            for (&ci, g) in cfgs.iter().zip(per_cfg) {
                let want = &wants[ci];
                let what = format!("{:?} world {k} rank {rank}", configs[ci].loss_type);
                let (o, cnt) = slices[rank];
                common::close_to_max(&format!("{what} loss"), &g.loss, &want.loss, 1e-6);
                // s = 64 scales the cosines before the exponentials, whose float32 rounding
                // differs between implementations (SwiftShader's most): 1e-5 of the largest.
                common::close_to_max(&format!("{what} dx"), &g.grads[0].1, &want.grads[0].1, 1e-5);
                common::close_to_max(
                    &format!("{what} dW slice"),
                    &g.grads[1].1,
                    &want.grads[1].1[o * d..(o + cnt) * d],
                    1e-5,
                );
            }
        }
    }
    // Overlapping slices, a gap, and a label that no rank owns: errors on every rank.
    for (slices, label, kind) in [
        (&[(0, 20), (15, 22)][..], 3, "InvalidInput"),
        (&[(0, 20), (21, 16)][..], 3, "InvalidInput"),
        (&[(0, 20), (20, 17)][..], 40, "LabelOutOfRange"),
    ] {
        let r = common::on_world(2, |rank, m| {
            let (o, cnt) = slices[rank];
            let local = AngularPenaltySMConfig::arcface(d, cnt);
            let mut yy = y.clone();
            yy[5] = label;
            let yt = ctx.upload_labels(&yy, &[n]).unwrap();
            let wt = ctx.upload(&w[..cnt * d], &[cnt, d]).unwrap();
            local.compute_class_sharded(ctx, &xt, &yt, &wt, o, m, &GradOpts::default())
        });
        assert_eq!(kinds(&r), [kind, kind], "{slices:?} label {label}");
    }
}

/// The gradient convention: each rank gets `dL_global / dx_local` (the rows of the whole
/// batch's gradient, above), so a framework that averages the ranks' gradients multiplies by
/// the world size with `GradOpts::scaled`: exactly twice the gradient on a world of two.
#[test]
fn gradients_scale_for_frameworks_that_average_across_ranks() {
    let ctx = common::ctx();
    let mut rng = common::rng(11);
    let x = ctx
        .upload(&common::uniform(&mut rng, 6 * 5, -2.0, 2.0), &[6, 5])
        .unwrap();
    let t = ctx
        .upload(&common::uniform(&mut rng, 6 * 5, -2.0, 2.0), &[6, 5])
        .unwrap();
    let loss = Combined::new()
        .term(1.0, RMSELoss::default(), &[0, 1])
        .term(0.5, MSELoss::default(), &[0, 1]);
    let got = common::on_world(2, |_, m| {
        let one = loss
            .compute_sharded(ctx, &[&x, &t], m, &GradOpts::default())
            .unwrap();
        let two = loss
            .compute_sharded(ctx, &[&x, &t], m, &GradOpts::scaled(2.0))
            .unwrap();
        (
            ctx.read(&one.grads[0]).unwrap(),
            ctx.read(&two.grads[0]).unwrap(),
        )
    });
    for (one, two) in got {
        let doubled: Vec<f32> = one.iter().map(|v| 2.0 * v).collect();
        assert_eq!(two, doubled);
    }
}

/// Accumulating into the caller's gradients: a rank with an empty shard (and empty gradient
/// tensors) takes part too.
#[test]
fn accumulating_with_an_empty_shard() {
    let ctx = common::ctx();
    let rng = common::rng(12);
    let rows = [3usize, 0];
    let got = common::on_world(2, |r, m| {
        let n = rows[r];
        let x = ctx
            .upload(
                &common::uniform(&mut rng.clone(), n * 4, -2.0, 2.0),
                &[n, 4],
            )
            .unwrap();
        let t = ctx.upload(&vec![0.5; n * 4], &[n, 4]).unwrap();
        let g = ctx.upload(&vec![1.0; n * 4], &[n, 4]).unwrap();
        let opts = GradOpts {
            into: vec![Some(g.clone())],
            accumulate: true,
            ..Default::default()
        };
        let loss = Combined::new().term(1.0, DiceLoss::binary(), &[0, 1]).term(
            1.0,
            MSELoss::default(),
            &[0, 1],
        );
        loss.compute_sharded(ctx, &[&x, &t], m, &opts).unwrap();
        (ctx.read(&x).unwrap(), ctx.read(&g).unwrap())
    });
    let (x0, g0) = &got[0];
    assert!(got[1].1.is_empty());
    // The rank with rows: 1 + its gradient (the whole batch is its rows).
    let x = ctx.upload(x0, &[3, 4]).unwrap();
    let t = ctx.upload(&[0.5; 12], &[3, 4]).unwrap();
    let want = Combined::new()
        .term(1.0, DiceLoss::binary(), &[0, 1])
        .term(1.0, MSELoss::default(), &[0, 1])
        .compute(ctx, &[&x, &t])
        .unwrap();
    let w: Vec<f32> = ctx
        .read(&want.grads[0])
        .unwrap()
        .iter()
        .map(|v| 1.0 + v)
        .collect();
    common::close_to_max("accumulated", g0, &w, 1e-6);
}
