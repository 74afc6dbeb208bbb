//! Two contexts in one process: a tensor of one passed to the other is a typed
//! `Error::InvalidInput` that names the input and both devices, at every entry point that takes
//! tensors, never a panic inside wgpu. Contexts over one wgpu device (`from_device` twice) share
//! their tensors.

mod common;

use deepml::*;

/// A second context on the adapter CI asks for (its own wgpu instance and device).
fn other() -> LossContext {
    let b = common::ctx();
    let o = LossContext::new().expect("a second context");
    assert_eq!(o.adapter().backend, b.adapter().backend);
    o
}

/// Asserts the error of a tensor of another context: InvalidInput, naming `name` and two
/// different devices.
fn assert_foreign<T>(what: &str, name: &str, r: Result<T>) {
    let err = match r {
        Ok(_) => panic!("{what}: a tensor of another context was accepted"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidInput(_)), "{what}: {msg}");
    assert!(
        msg.contains(name),
        "{what}: the message should name {name:?}: {msg}"
    );
    assert!(
        msg.matches("device #").count() == 2 && msg.contains("another context"),
        "{what}: the message should name both devices: {msg}"
    );
}

fn mse() -> MSELoss {
    MSELoss::default()
}

#[test]
fn losses_refuse_a_tensor_of_another_context() {
    let a = common::ctx();
    let b = other();
    let mut rng = common::rng(13);
    let va = common::uniform(&mut rng, 64, -2.0, 2.0);
    let vb = common::uniform(&mut rng, 64, -2.0, 2.0);
    let (xa, ya) = (
        a.upload(&va, &[8, 8]).unwrap(),
        a.upload(&vb, &[8, 8]).unwrap(),
    );
    let xb = b.upload(&va, &[8, 8]).unwrap();

    // compute and compute_with: the input is named by the loss's own argument names.
    assert_foreign("compute", "target", mse().compute(a, &[&xa, &xb]));
    assert_foreign("compute", "input", mse().compute(a, &[&xb, &ya]));
    assert_foreign(
        "compute_with",
        "input",
        mse().compute_with(a, &[&xb, &ya], &GradOpts::scaled(2.0)),
    );
    // A gradient destination of the other context.
    let into = GradOpts {
        into: vec![Some(b.empty(&[8, 8], DType::F32).unwrap())],
        ..Default::default()
    };
    assert_foreign(
        "GradOpts.into",
        "GradOpts.into[0]",
        mse().compute_with(a, &[&xa, &ya], &into),
    );
    // record: into the caller's encoder of context a.
    let mut enc = a.device().create_command_encoder(&Default::default());
    assert_foreign(
        "record",
        "input",
        mse().record(a, &mut enc, &[&xb, &ya], &GradOpts::default()),
    );
    drop(enc);
    // Every loss takes the same path: labels and a second embedding too.
    let labels_b = b.upload_labels(&[0, 1, 2, 1, 0, 2, 1, 0], &[8]).unwrap();
    let ce = CrossEntropyLoss::default();
    assert_foreign("cross-entropy", "target", ce.compute(a, &[&xa, &labels_b]));
    let con = ContrastiveLoss::default();
    let lab_a = a
        .upload(&[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0], &[8])
        .unwrap();
    assert_foreign(
        "contrastive",
        "embeddings2",
        con.compute(a, &[&xa, &xb, &lab_a]),
    );

    // The same computations on a's own tensors still work, and a's device is not poisoned.
    let r = mse().compute(a, &[&xa, &ya]).unwrap();
    let want: f64 = va
        .iter()
        .zip(&vb)
        .map(|(&p, &q)| ((p - q) as f64).powi(2))
        .sum::<f64>()
        / 64.0;
    let got = r.value(a).unwrap() as f64;
    assert!((got - want).abs() <= 1e-5 * want, "{got} against {want}");
    // And b's tensors work on b.
    let yb = b.upload(&vb, &[8, 8]).unwrap();
    let rb = mse().compute(&b, &[&xb, &yb]).unwrap();
    assert_eq!(rb.value(&b).unwrap(), r.value(a).unwrap());
}

#[test]
fn combined_refuses_a_tensor_of_another_context() {
    let a = common::ctx();
    let b = other();
    let xa = a.upload(&[0.5, -1.0, 2.0, -3.0], &[1, 1, 2, 2]).unwrap();
    let ma = a.upload(&[1.0, 0.0, 1.0, 0.0], &[1, 1, 2, 2]).unwrap();
    let mb = b.upload(&[1.0, 0.0, 1.0, 0.0], &[1, 1, 2, 2]).unwrap();
    let loss = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1]);
    assert_foreign("Combined::compute", "input 1", loss.compute(a, &[&xa, &mb]));
    let mut enc = a.device().create_command_encoder(&Default::default());
    assert_foreign(
        "Combined::record",
        "input 1",
        loss.record(a, &mut enc, &[&xa, &mb], &deepml::GradOpts::default()),
    );
    drop(enc);
    let ok = loss.compute(a, &[&xa, &ma]).unwrap();
    assert!(a.read_scalar(&ok.loss).unwrap().is_finite());
}

#[test]
fn reads_copies_and_axpy_refuse_a_tensor_of_another_context() {
    let a = common::ctx();
    let b = other();
    let xa = a.upload(&[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
    let xb = b.upload(&[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
    assert_foreign("read", "the tensor", a.read(&xb));
    assert_foreign("read_scalar", "the tensor", a.read_scalar(&xb));
    assert_foreign(
        "read_bytes_async",
        "the tensor",
        pollster::block_on(a.read_bytes_async(&xb)),
    );
    let lb = b.upload_labels(&[1, 2], &[2]).unwrap();
    assert_foreign("read_i32", "the tensor", a.read_i32(&lb));
    if b.has_f16() {
        let hb = b.upload_f16(&[1.0, 2.0], &[2]).unwrap();
        assert_foreign("read_f16", "the tensor", a.read_f16(&hb));
    }
    assert_foreign("copy", "the tensor", a.copy(&xb));
    assert_foreign("axpy", "y", a.axpy(&xa, 1.0, &xb));
    assert_foreign("axpy", "x", a.axpy(&xb, 1.0, &xa));
    let mut enc = a.device().create_command_encoder(&Default::default());
    assert_foreign("record_axpy", "y", a.record_axpy(&mut enc, &xa, 1.0, &xb));
    drop(enc);
    // Nothing was changed, and both contexts still work.
    assert_eq!(a.read(&xa).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    a.axpy(&xa, 2.0, &a.copy(&xa).unwrap()).unwrap();
    assert_eq!(a.read(&xa).unwrap(), vec![3.0, 6.0, 9.0, 12.0]);
    assert_eq!(b.read(&xb).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn a_wrapped_buffer_belongs_to_the_context_it_was_wrapped_for() {
    let a = common::ctx();
    let b = other();
    let raw = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("b's buffer"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    b.queue()
        .write_buffer(&raw, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0]));
    let tb = Tensor::from_buffer(&b, raw, 0, &[4], DType::F32).unwrap();
    assert_eq!(b.read(&tb).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let xa = a.upload(&[0.0; 4], &[4]).unwrap();
    assert_foreign("from_buffer, read", "the tensor", a.read(&tb));
    assert_foreign(
        "from_buffer, compute",
        "target",
        mse().compute(a, &[&xa, &tb]),
    );
    // An offset at the device's storage alignment is accepted; one off it is not.
    let align = b.adapter().limits.min_storage_buffer_offset_alignment as u64;
    let big = b
        .empty(&[(align as usize / 4) * 2 + 4], DType::F32)
        .unwrap();
    assert!(Tensor::from_buffer(&b, big.buffer().clone(), align, &[4], DType::F32).is_ok());
    let err = Tensor::from_buffer(&b, big.buffer().clone(), 4, &[4], DType::F32).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn the_angular_weight_of_another_context_is_refused() {
    let a = common::ctx();
    let b = other();
    let cfg = AngularPenaltySMConfig::new(4, 3, LossType::ArcFace);
    let mut on_b = AngularPenaltySMLoss::new(&b, cfg.clone(), 7).unwrap();
    let mut on_a = AngularPenaltySMLoss::new(a, cfg, 7).unwrap();
    let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).sin()).collect();
    let xa = a.upload(&x, &[2, 4]).unwrap();
    let xb = b.upload(&x, &[2, 4]).unwrap();
    let ya = a.upload_labels(&[0, 2], &[2]).unwrap();
    // The loss's own weight lives on b: every call of it on a is refused.
    assert_foreign(
        "angular compute",
        "the weight",
        on_b.compute(a, &[&xa, &ya]),
    );
    assert_foreign(
        "angular compute_with_labels",
        "the weight",
        on_b.compute_with_labels(a, &xa, &[0, 2]),
    );
    assert_foreign(
        "angular set_weight",
        "the weight",
        on_b.set_weight(a, &[0.5; 12]),
    );
    assert_foreign("angular read_weight", "the tensor", on_b.read_weight(a));
    let ga = a.empty(&[3, 4], DType::F32).unwrap();
    assert_foreign("angular sgd_step", "the weight", on_b.sgd_step(a, &ga, 0.1));
    // x or the gradient of the other context, with a's own loss.
    assert_foreign(
        "angular compute_with_labels",
        "x",
        on_a.compute_with_labels(a, &xb, &[0, 2]),
    );
    let gb = b.empty(&[3, 4], DType::F32).unwrap();
    assert_foreign("angular sgd_step", "grad_w", on_a.sgd_step(a, &gb, 0.1));
    // Each loss on its own context agrees with the other.
    let ra = on_a.compute_with_labels(a, &xa, &[0, 2]).unwrap();
    let rb = on_b.compute_with_labels(&b, &xb, &[0, 2]).unwrap();
    assert_eq!(ra.value(a).unwrap(), rb.value(&b).unwrap());
    on_a.sgd_step(a, &ra.grads[1], 0.1).unwrap();
    // The test binary's context lives until the process exits: leave no work in flight then
    // (lavapipe can crash when the process exits under a running submission).
    a.synchronize().unwrap();
}

#[test]
fn contexts_over_one_wgpu_device_share_their_tensors() {
    // The caller's own device, on the backend CI asks for.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let c1 = LossContext::from_device(device.clone(), queue.clone(), info.clone());
    let c2 = LossContext::from_device(device.clone(), queue.clone(), info);
    let mut rng = common::rng(31);
    let v = common::uniform(&mut rng, 32, -1.0, 1.0);
    let w = common::uniform(&mut rng, 32, -1.0, 1.0);
    let x1 = c1.upload(&v, &[32]).unwrap();
    let y2 = c2.upload(&w, &[32]).unwrap();
    // A tensor of c1 and one of c2 in one loss on either context, gradients into the other's.
    let g1 = c1.empty(&[32], DType::F32).unwrap();
    let opts = GradOpts {
        into: vec![Some(g1.clone())],
        ..Default::default()
    };
    let r2 = mse().compute_with(&c2, &[&x1, &y2], &opts).unwrap();
    let r1 = mse().compute(&c1, &[&x1, &y2]).unwrap();
    assert_eq!(r1.value(&c1).unwrap(), r2.value(&c2).unwrap());
    assert_eq!(c1.read(&g1).unwrap(), r1.grad(&c1, 0).unwrap());
    assert_eq!(c2.read(&g1).unwrap(), c1.read(&r1.grads[0]).unwrap());
    c2.axpy(&x1, -0.5, &g1).unwrap();
    let copied = c1.copy(&y2).unwrap();
    assert_eq!(c2.read(&copied).unwrap(), w);
    // A raw buffer of the shared device, wrapped for c1, is also c2's.
    let raw = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 128,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    queue.write_buffer(&raw, 0, bytemuck::cast_slice(&w));
    let t = Tensor::from_buffer(&c1, raw, 0, &[32], DType::F32).unwrap();
    assert_eq!(c2.read(&t).unwrap(), w);
    // A third wrapper made after the first two are gone still shares with their tensors.
    drop((c1, c2));
    let c3 = LossContext::from_device(device, queue, adapter.get_info());
    assert_eq!(c3.read(&t).unwrap(), w);
    // A context over another device refuses the shared device's tensors.
    assert_foreign(
        "a wrapper's tensor elsewhere",
        "input",
        mse().compute(common::ctx(), &[&x1, &x1]),
    );
    assert_foreign(
        "a wrapper's tensor elsewhere",
        "the tensor",
        common::ctx().read(&t),
    );
}
