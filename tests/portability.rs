//! Every shader variant of the library is parsed and validated by naga, then translated to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.10 (GL): the Metal and DX12 paths
//! are checked even where no such GPU exists. The subgroup variants too, except to GLSL.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

#[test]
fn every_shader_translates_to_every_backend() {
    // Every variant as composed for an adapter without usable subgroups (the barrier tree), and
    // again with the subgroup reductions (an SG of 32 here; only the constant differs).
    let variants: Vec<_> = deepml::all_shader_variants()
        .into_iter()
        .flat_map(|v| [v.clone(), v.with_subgroup(Some(32))])
        .collect();
    assert!(
        variants.len() >= 4,
        "the registry lists every shader variant"
    );
    let mut entry_points = 0;
    // Variants whose text is the same (a kernel without workgroup reductions composes alike with
    // and without subgroups) are checked once.
    let mut seen = std::collections::HashSet::new();
    for v in &variants {
        let key = v.key();
        let src = v.compose();
        if !seen.insert(src.clone()) {
            continue;
        }
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(&src)));
        // Only the capabilities a plain WebGPU device has, so the shaders run everywhere; the
        // f16-input variants also need SHADER_F16 (used only where the adapter offers it).
        let mut caps = if v.f16 {
            Capabilities::SHADER_FLOAT16
        } else {
            Capabilities::empty()
        };
        if v.subgroup != 0 {
            caps |= Capabilities::SUBGROUP;
        }
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(&src)));

        spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e}"));
        msl::write_string(
            &module,
            &info,
            &msl::Options::default(),
            &msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{key}: MSL: {e}"));
        let mut hlsl_out = String::new();
        hlsl::Writer::new(
            &mut hlsl_out,
            &hlsl::Options::default(),
            &hlsl::PipelineOptions::default(),
        )
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{key}: HLSL: {e}"));

        // GLSL has no f16, and wgpu's GL backend never offers SHADER_F16 nor SUBGROUP.
        for ep in module
            .entry_points
            .iter()
            .filter(|_| !v.f16 && v.subgroup == 0)
        {
            entry_points += 1;
            let mut out = String::new();
            let options = glsl::Options {
                version: glsl::Version::new_gles(310),
                ..Default::default()
            };
            let pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: ep.name.clone(),
                multiview: None,
            };
            glsl::Writer::new(
                &mut out,
                &module,
                &info,
                &options,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .unwrap_or_else(|e| panic!("{key}::{}: GLSL ES 3.10: {e}", ep.name));
        }
    }
    eprintln!(
        "{} shader variants, {entry_points} entry points translated to SPIR-V, MSL, HLSL and GLSL",
        variants.len()
    );
}
