//! Runs `deepml-cases/1` cases on the GPU: the evaluator behind `deepml check` and `deepml eval`.

use std::collections::BTreeMap;

use crate::cases::{self, Case, Evaluated, Evaluator, LossSpec, TensorData};
use crate::context::LossContext;
use crate::error::Result;
use crate::losses::{self, Loss};
use crate::tensor::Tensor;

/// Evaluates cases with the GPU losses of a context.
#[derive(Debug)]
pub struct GpuEvaluator<'a> {
    /// The context whose device runs the cases.
    pub ctx: &'a LossContext,
}

fn upload(ctx: &LossContext, t: &TensorData, name: &str) -> Result<Tensor> {
    match t.dtype {
        cases::DType::I64 => ctx.upload_labels_i64(&t.to_i64(name)?, &t.shape),
        cases::DType::F32 => ctx.upload(&t.to_f32(), &t.shape),
    }
}

fn download(ctx: &LossContext, t: &Tensor) -> Result<TensorData> {
    let v = ctx.read(t)?;
    Ok(TensorData {
        shape: t.shape().to_vec(),
        dtype: cases::DType::F32,
        data: v.iter().map(|&x| x as f64).collect(),
    })
}

impl GpuEvaluator<'_> {
    fn run(&self, case: &Case, spec: &LossSpec, loss: &dyn Loss) -> Result<Evaluated> {
        spec.check_case_labels(case)?;
        let inputs: Vec<Tensor> = loss
            .input_names()
            .iter()
            .map(|n| upload(self.ctx, case.input(n)?, n))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = loss.compute(self.ctx, &refs)?;
        let mut grads = BTreeMap::new();
        for (name, g) in loss.grad_names().iter().zip(&out.grads) {
            grads.insert(name.to_string(), download(self.ctx, g)?);
        }
        Ok(Evaluated {
            loss: download(self.ctx, &out.loss)?,
            grads,
        })
    }
}

impl Evaluator for GpuEvaluator<'_> {
    fn name(&self) -> String {
        format!("GPU: {}", self.ctx.adapter().summary())
    }
    fn eval(&self, case: &Case) -> Option<Result<Evaluated>> {
        let spec = match cases::loss_spec(case) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let loss = losses::gpu_loss(&spec)?;
        Some(self.run(case, &spec, loss.as_ref()))
    }
}
