//! A caller's wgpu device wrapped by deepml (`LossContext::from_device_with`): the caller's
//! uncaptured-error handler and device-lost callback stay installed, and the caller's buffers
//! are taken at any offset that is a multiple of the device's storage-offset alignment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deepml::context::list_adapters;
use deepml::{ContextOptions, DType, JaccardLoss, Loss, LossContext, MSELoss, Tensor};

fn caller_device() -> (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo) {
    let adapter = pollster::block_on(list_adapters(&ContextOptions::default()))
        .into_iter()
        .find(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .expect("no adapter with compute shaders");
    let info = adapter.get_info();
    if let Ok(want) = std::env::var("DEEPML_EXPECT_BACKEND") {
        assert_eq!(
            format!("{:?}", info.backend).to_lowercase(),
            want.to_lowercase()
        );
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the caller's"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    (device, queue, info)
}

#[test]
fn from_device_keeps_the_callers_handlers() {
    let (device, queue, info) = caller_device();
    let errors = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let e = errors.clone();
    device.on_uncaptured_error(Arc::new(move |_| {
        e.fetch_add(1, Ordering::SeqCst);
    }));
    let l = lost.clone();
    device.set_device_lost_callback(move |_, _| {
        l.fetch_add(1, Ordering::SeqCst);
    });
    let ctx = LossContext::from_device_with(
        device.clone(),
        queue,
        info,
        &ContextOptions {
            check_finite: true,
            ..Default::default()
        },
    );
    // The options apply: a NaN input is refused at the read.
    let x = ctx.upload(&[0.5, f32::NAN], &[2]).unwrap();
    let t = ctx.upload(&[0.0, 1.0], &[2]).unwrap();
    let out = MSELoss::default().compute(&ctx, &[&x, &t]).unwrap();
    assert!(out.value(&ctx).is_err());
    // deepml's work does not reach the caller's handler ...
    let x = ctx.upload(&[0.5, 2.0], &[2]).unwrap();
    let out = MSELoss::default().compute(&ctx, &[&x, &t]).unwrap();
    assert!((out.value(&ctx).unwrap() - 0.625).abs() < 1e-6);
    assert_eq!(errors.load(Ordering::SeqCst), 0);
    // ... but the caller's own error does, after the context was made.
    let _bad = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid usage"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    assert_eq!(
        errors.load(Ordering::SeqCst),
        1,
        "the caller's handler did not fire"
    );
    // The caller's lost callback too.
    device.destroy();
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    assert_eq!(
        lost.load(Ordering::SeqCst),
        1,
        "the caller's lost callback did not fire"
    );
}

#[test]
fn from_buffer_takes_any_aligned_offset() {
    let (device, queue, info) = caller_device();
    let ctx = LossContext::from_device(device.clone(), queue.clone(), info);
    let align = ctx
        .adapter()
        .limits
        .min_storage_buffer_offset_alignment
        .max(4) as u64;
    let n = 300usize;
    let logits: Vec<f32> = (0..n)
        .map(|i| ((i * 29 % 23) as f32 - 11.0) / 4.0)
        .collect();
    let mask: Vec<f32> = (0..n).map(|i| (i % 4 == 1) as u8 as f32).collect();
    let x0 = ctx.upload(&logits, &[3, 1, 10, 10]).unwrap();
    let t = ctx.upload(&mask, &[3, 1, 10, 10]).unwrap();
    let want = JaccardLoss::binary().compute(&ctx, &[&x0, &t]).unwrap();
    let (wv, wg) = (want.value(&ctx).unwrap(), want.grad(&ctx, 0).unwrap());
    for k in [1u64, 2, 3, 7] {
        let offset = k * align;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("the caller's"),
            size: offset + 4 * n as u64 + 64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, offset, bytemuck::cast_slice(&logits));
        let x = Tensor::from_buffer(&ctx, buffer, offset, &[3, 1, 10, 10], DType::F32).unwrap();
        assert_eq!(ctx.read(&x).unwrap(), logits);
        let got = JaccardLoss::binary().compute(&ctx, &[&x, &t]).unwrap();
        assert_eq!(got.value(&ctx).unwrap(), wv, "offset {offset}");
        assert_eq!(got.grad(&ctx, 0).unwrap(), wg, "offset {offset}");
    }
    if align > 4 {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4096,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = Tensor::from_buffer(&ctx, buffer, 4, &[4], DType::F32).unwrap_err();
        assert_eq!(e.kind(), "invalid_input");
    }
}
