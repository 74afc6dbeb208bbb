//! Choosing an adapter: the report of what an adapter offers, the ranking of back ends and device
//! types, the adapter list, and the probe that verifies an adapter's subgroups before the
//! reductions use them.

use crate::context::ContextOptions;
use crate::error::{Error, Result};

/// What the context knows of its adapter: the facts `deepml info` prints.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    /// The adapter's name, as the driver gives it.
    pub name: String,
    /// The graphics API wgpu drives it through (Vulkan, Metal, DX12, GL, WebGPU).
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
    /// The driver's name (may be empty).
    pub driver: String,
    /// The driver's version and other details (may be empty).
    pub driver_info: String,
    /// The PCI vendor id (0 where the backend does not say).
    pub vendor: u32,
    /// The PCI device id (0 where the backend does not say).
    pub device: u32,
    /// The limits of the adapter (of the device, for a context made by
    /// [`crate::LossContext::from_device`]).
    pub limits: wgpu::Limits,
    /// The features of the adapter (of the device, for a context made by
    /// [`crate::LossContext::from_device`]).
    pub features: wgpu::Features,
    /// The smallest and largest subgroup the adapter may run (wgpu's AdapterInfo).
    pub subgroup_sizes: (u32, u32),
}

impl AdapterReport {
    /// The report of `adapter`.
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        Self::from_parts(adapter.get_info(), adapter.limits(), adapter.features())
    }
    pub(crate) fn from_parts(
        info: wgpu::AdapterInfo,
        limits: wgpu::Limits,
        features: wgpu::Features,
    ) -> Self {
        AdapterReport {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver,
            driver_info: info.driver_info,
            vendor: info.vendor,
            device: info.device,
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            limits,
            features,
        }
    }
    /// One line: name, backend, device type, driver.
    pub fn summary(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

pub(crate) fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

pub(crate) fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(crate) fn backends_from(opts: &ContextOptions) -> wgpu::Backends {
    opts.backends
        .or_else(wgpu::Backends::from_env)
        .unwrap_or(wgpu::Backends::all())
}

pub(crate) fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter the machine has, best first (discrete before integrated before CPU; Vulkan,
/// Metal and DX12 before GL).
pub async fn list_adapters(opts: &ContextOptions) -> Vec<wgpu::Adapter> {
    let backends = backends_from(opts);
    list_adapters_of(&make_instance(backends), backends).await
}

async fn list_adapters_of(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
) -> Vec<wgpu::Adapter> {
    let mut adapters = instance.enumerate_adapters(backends).await;
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (type_rank(i.device_type), backend_rank(i.backend))
    });
    adapters
}

/// The best adapter that `opts` allow, and the wgpu instance it was found through (what a
/// runtime that shares the device, such as Burn's, is handed with it).
pub(crate) async fn pick_adapter(opts: &ContextOptions) -> Result<(wgpu::Instance, wgpu::Adapter)> {
    let backends = backends_from(opts);
    let name = opts
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .map(|n| n.to_lowercase());
    let instance = make_instance(backends);
    let mut adapters = list_adapters_of(&instance, backends).await;
    if adapters.is_empty() {
        // enumerate_adapters is not available everywhere (WebGPU): ask for one.
        if let Ok(a) = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
        {
            adapters.push(a);
        }
    }
    // Every loss is a compute shader: an adapter without them (a GL context below 4.3, say) is
    // listed in the error, never picked.
    let computes = |a: &wgpu::Adapter| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    };
    let found: Vec<String> = adapters
        .iter()
        .map(|a| {
            let s = AdapterReport::of(a).summary();
            if computes(a) {
                s
            } else {
                format!("{s} without compute shaders")
            }
        })
        .collect();
    adapters
        .into_iter()
        .find(|a| {
            computes(a)
                && name
                    .as_ref()
                    .is_none_or(|n| a.get_info().name.to_lowercase().contains(n))
        })
        .ok_or_else(|| {
            Error::NoAdapter(format!(
                "no adapter for backends {backends:?}{}; found: [{}]",
                name.map(|n| format!(" with a name containing {n:?}"))
                    .unwrap_or_default(),
                found.join("; ")
            ))
        })
        .map(|a| (instance, a))
}

/// The probe of `LossContext::subgroup_size`: every invocation of two workgroups reports the
/// first local index of its subgroup, the subgroup's size, its own lane and the subgroup's sum
/// of the local indices.
#[cfg(not(target_arch = "wasm32"))]
const SUBGROUP_PROBE: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<vec4<u32>>;
@compute @workgroup_size(256)
fn probe(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let first = subgroupBroadcastFirst(lid);
    let size = subgroupAdd(1u);
    let lane = subgroupExclusiveAdd(1u);
    let sum = subgroupAdd(lid);
    out[wid.x * 256u + lid] = vec4<u32>(first, size, lane, sum);
}
";

/// Runs the probe where the adapter's subgroups have one size, a power of two from 4 to the
/// workgroup size; the size where every subgroup is that many consecutive local indices.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn probe_subgroups(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    (min, max): (u32, u32),
) -> Option<u32> {
    let wg = crate::kernel::WG;
    if min != max || !min.is_power_of_two() || !(4..=wg).contains(&min) {
        return None;
    }
    let sg = min;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("deepml subgroup probe"),
        source: wgpu::ShaderSource::Wgsl(SUBGROUP_PROBE.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("deepml subgroup probe"),
        layout: None,
        module: &module,
        entry_point: Some("probe"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bytes = 2 * wg as u64 * 16;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: out.as_entire_binding(),
        }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(2, 1, 1);
    }
    enc.copy_buffer_to_buffer(&out, 0, &read, 0, bytes);
    queue.submit(Some(enc.finish()));
    if pollster::block_on(scope.pop()).is_some() {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    read.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).ok()?;
    rx.recv().ok()?.ok()?;
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&read.get_mapped_range(..).ok()?);
    read.unmap();
    let linear = words.chunks(4).enumerate().all(|(i, w)| {
        let lid = i as u32 % wg;
        let first = lid - lid % sg;
        let sum = (first..first + sg).sum::<u32>();
        w == [first, sg, lid % sg, sum]
    });
    linear.then_some(sg)
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn probe_subgroups(_: &wgpu::Device, _: &wgpu::Queue, _: (u32, u32)) -> Option<u32> {
    None
}
