//! The `deepml` command-line tool, run as a user runs it.
mod common;

use std::process::Command;

fn deepml(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deepml"))
        .args(args)
        .output()
        .expect("the deepml binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn info_lists_the_adapters() {
    let (code, out, _) = deepml(&["info"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("<- best") && out.contains("max_storage_buffer_binding_size"),
        "{out}"
    );
}

#[test]
fn check_passes_every_public_case() {
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases/public.json");
    let (code, out, err) = deepml(&["check", cases]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines().any(|l| l == "88 passed, 0 failed, 0 skipped"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(" PASS ")).count(),
        88,
        "one line per case"
    );
}

#[test]
fn check_fails_on_a_wrong_expectation_and_eval_writes_the_results() {
    let dir = std::env::temp_dir().join(format!("deepml-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases/public.json");
    // eval: the same cases with `expected` replaced by what the library computed.
    let got = dir.join("got.json");
    let (code, out, err) = deepml(&["eval", public, "-o", got.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let file = deepml::cases::load(&got).unwrap();
    assert_eq!(file.cases.len(), 88);
    let want = deepml::cases::load(std::path::Path::new(public)).unwrap();
    for (g, w) in file.cases.iter().zip(&want.cases) {
        let err = |e: &deepml::cases::Expected| match e {
            deepml::cases::Expected::Error { kind } => Some(kind.clone()),
            _ => None,
        };
        assert_eq!(
            err(&g.expected),
            err(&w.expected),
            "{}: the error cases come back as errors of their kind",
            g.name
        );
    }
    // And the written values check against the PyTorch ones.
    let verdicts: Vec<_> = file
        .cases
        .iter()
        .zip(&want.cases)
        .map(|(g, w)| {
            let got = match &g.expected {
                deepml::cases::Expected::Ok { loss, grads } => Ok(deepml::cases::Evaluated {
                    loss: loss.clone(),
                    grads: grads.clone(),
                }),
                deepml::cases::Expected::Error { kind } => {
                    Err(deepml::Error::InvalidInput(kind.clone()))
                }
            };
            deepml::cases::check_case(w, Some(got))
        })
        .collect();
    let failed: Vec<_> = verdicts.iter().zip(&want.cases).filter(|(v, c)| {
        !matches!(v, deepml::cases::Verdict::Pass { .. }) && !matches!(c.expected, deepml::cases::Expected::Error { ref kind } if kind == "invalid_config")
    }).map(|(v, c)| format!("{}: {v:?}", c.name)).collect();
    assert!(failed.is_empty(), "{failed:?}");
    // A case whose expected loss is wrong must FAIL, and the tool must exit 1.
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(public).unwrap()).unwrap();
    let case = &mut text["cases"][18]; // rmse_random
    assert_eq!(case["name"], "rmse_random");
    let v = case["expected"]["loss"]["data"][0].as_f64().unwrap();
    case["expected"]["loss"]["data"][0] = serde_json::json!(v * 1.01);
    text["cases"] = serde_json::Value::Array(vec![case.clone()]);
    let wrong = dir.join("wrong.json");
    std::fs::write(&wrong, text.to_string()).unwrap();
    let (code, out, _) = deepml(&["check", wrong.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rmse_random")
            && out.contains("FAIL")
            && out.contains("0 passed, 1 failed, 0 skipped"),
        "{out}"
    );
    // A file that is not a cases file is an error, not a panic.
    std::fs::write(
        &wrong,
        "{\"format\": \"deepml-cases/1\", \"cases\": [{\"name\": 1}]}",
    )
    .unwrap();
    let (code, _, err) = deepml(&["check", wrong.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cases file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_callers_device_and_buffers_are_used_without_a_copy() {
    // A model that already runs on its own wgpu device hands it over with its buffers.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let data = [0.5f32, -1.0, 2.0, 4.0];
    let make = |v: &[f32]| {
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("the model's buffer"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        queue.write_buffer(&b, 0, bytemuck::cast_slice(v));
        b
    };
    let (out_buf, tgt_buf) = (make(&data), make(&[0.0, 0.0, 0.0, 0.0]));
    let ctx = deepml::LossContext::from_device(device, queue, info);
    let out =
        deepml::Tensor::from_buffer(&ctx, out_buf.clone(), 0, &[4], deepml::DType::F32).unwrap();
    let tgt = deepml::Tensor::from_buffer(&ctx, tgt_buf, 0, &[4], deepml::DType::F32).unwrap();
    assert!(out.buffer() == &out_buf, "no copy");
    use deepml::Loss;
    let r = deepml::MSELoss {
        reduction: deepml::Reduction::Sum,
    }
    .compute(&ctx, &[&out, &tgt])
    .unwrap();
    assert_eq!(r.value(&ctx).unwrap(), 0.25 + 1.0 + 4.0 + 16.0);
    assert_eq!(r.grad(&ctx, 0).unwrap(), vec![1.0, -2.0, 4.0, 8.0]);
}

#[test]
fn bench_steps_time_each_step_of_a_loss() {
    let dir = std::env::temp_dir().join(format!("deepml-steps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("steps.json");
    let args = [
        "bench", "--only", "DiceLoss", "--size", "65536", "--runs", "1", "--steps", "--json",
    ];
    let (code, out, err) = deepml(&[&args[..], &[json.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let r = &report["results"][0];
    assert_eq!(r["loss"], "DiceLoss");
    let steps = r["steps"].as_array().cloned().unwrap_or_default();
    if report["timer"] != "timestamp" {
        // GL: no timestamp queries, no profile.
        assert!(steps.is_empty(), "{steps:?}");
        return;
    }
    // Dice: its statistics, the reduction, the finalize step and the gradient, in order.
    let labels: Vec<&str> = steps.iter().map(|s| s[0].as_str().unwrap()).collect();
    assert!(labels.len() >= 4, "{labels:?}");
    assert!(
        labels[0].starts_with("segmentation:") && labels[0].contains("::"),
        "{labels:?}"
    );
    assert!(
        labels.iter().any(|l| l.ends_with("::finalize")),
        "{labels:?}"
    );
    assert!(
        labels.iter().any(|l| l.starts_with("reduce::")),
        "{labels:?}"
    );
    let times: Vec<f64> = steps.iter().map(|s| s[1].as_f64().unwrap()).collect();
    assert!(
        times.iter().all(|&t| t.is_finite() && t >= 0.0),
        "{times:?}"
    );
    // The steps alone take about as long as the whole loss (launch gaps aside).
    let total: f64 = times.iter().sum();
    let ms = r["ms"].as_f64().unwrap();
    assert!(
        total > 0.2 * ms && total < 5.0 * ms,
        "steps {total} ms, loss {ms} ms"
    );
    assert!(
        out.contains("each step alone"),
        "the Markdown lists them: {out}"
    );
}
