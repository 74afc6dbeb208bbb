//! `LossContext`: the instance, adapter, device and queue; the pipeline cache; the buffer pool's
//! use (src/pool.rs); error scopes and device-loss tracking; uploads and readbacks. Choosing the
//! adapter is src/adapter.rs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::adapter::{list_adapters, AdapterReport};
use crate::adapter::{pick_adapter, probe_subgroups};
use crate::error::{Error, Result};
pub use crate::pool::AllocStats;
pub(crate) use crate::pool::{size_class, Pool, PoolBuf, POOL_IDLE_ALLOCS, POOL_TRIM_EVERY};
use crate::tensor::{DType, Tensor};

/// Options of a new context. `Default` picks the best adapter, honouring `WGPU_BACKEND` and
/// `WGPU_ADAPTER_NAME`.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Only these backends (default: `WGPU_BACKEND`, else all).
    pub backends: Option<wgpu::Backends>,
    /// Only an adapter whose name contains this, case-insensitively (default: `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Cap the bytes of one storage binding below the device's limit, so that the windowed
    /// dispatch of large tensors can be exercised on small ones (tests, debugging).
    pub max_window_bytes: Option<u64>,
    /// Do not use subgroup operations even where the adapter has them.
    pub disable_subgroups: bool,
    /// Scan every f32 input of every loss for NaN and infinity on the device; a loss given one
    /// then fails at the next read with `Error::InvalidInput`. Off by default: a NaN input then
    /// gives a NaN loss where the README says so, elsewhere what the implementation's built-ins
    /// make of it.
    pub check_finite: bool,
    /// The most bytes the buffer pool keeps for reuse (default: twice the most bytes ever live
    /// at once, plus 4 MiB). Buffers over it are released, least recently used first; buffers
    /// not reused for a while are released too.
    pub pool_cap: Option<u64>,
    /// Request timestamp queries where the adapter has them (what `deepml bench` times kernels
    /// with); off by default, since some drivers pay for them on every submission.
    pub timestamps: bool,
    /// Choose the kernels tuned for CPU adapters (`Some(true)`: lavapipe, SwiftShader) or for
    /// GPUs (`Some(false)`) whatever the adapter is (default: by its device type). Every
    /// choice computes the same results; this lets tests run both on one adapter.
    pub cpu_kernels: Option<bool>,
}

/// The wgpu device a context works on, as tensors remember it: every tensor carries its
/// context's `Home`, and every entry point that takes a tensor compares ids before binding it
/// (a buffer of another wgpu instance would make wgpu-core panic, one of another device of the
/// same instance fail validation). Contexts that wrap one wgpu device share one `Home`.
#[derive(Clone)]
pub(crate) struct Home(Arc<HomeInner>);

pub(crate) struct HomeInner {
    id: u64,
    adapter: String,
}

static NEXT_HOME: AtomicU64 = AtomicU64::new(1);

/// The devices handed to `LossContext::from_device`, with their `Home`s while a context or
/// tensor still holds one.
type Wrapped = Vec<(wgpu::Device, std::sync::Weak<HomeInner>)>;
#[cfg(not(target_arch = "wasm32"))]
static WRAPPED: Mutex<Wrapped> = Mutex::new(Vec::new());
// On the web wgpu's devices are neither Send nor Sync (one thread): a thread-local list.
#[cfg(target_arch = "wasm32")]
thread_local! {
    static WRAPPED: std::cell::RefCell<Wrapped> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on the list of wrapped devices (`None` if its lock is poisoned).
fn with_wrapped<R>(f: impl FnOnce(&mut Wrapped) -> R) -> Option<R> {
    #[cfg(not(target_arch = "wasm32"))]
    return WRAPPED.lock().ok().map(|mut w| f(&mut w));
    #[cfg(target_arch = "wasm32")]
    return Some(WRAPPED.with(|w| f(&mut w.borrow_mut())));
}

impl Home {
    fn fresh(adapter: &str) -> Home {
        Home(Arc::new(HomeInner {
            id: NEXT_HOME.fetch_add(1, Ordering::Relaxed),
            adapter: adapter.to_string(),
        }))
    }

    /// The `Home` of a caller's device: the one of an earlier `from_device` over the same
    /// device while it lives, else a new one. wgpu compares devices by their id within an
    /// instance, so this is exact for devices of one wgpu instance.
    fn of_wrapped(device: &wgpu::Device, adapter: &str) -> Home {
        with_wrapped(|wrapped| {
            wrapped.retain(|(_, w)| w.strong_count() > 0);
            if let Some(h) = wrapped
                .iter()
                .find(|(d, _)| d == device)
                .and_then(|(_, w)| w.upgrade())
            {
                return Home(h);
            }
            let h = Home::fresh(adapter);
            wrapped.push((device.clone(), Arc::downgrade(&h.0)));
            h
        })
        .unwrap_or_else(|| Home::fresh(adapter))
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    /// "device #3 (llvmpipe (LLVM 15.0.6, 256 bits))".
    pub(crate) fn describe(&self) -> String {
        format!("device #{} ({})", self.0.id, self.0.adapter)
    }
}

struct DeviceState {
    lost: Mutex<Option<String>>,
    sticky: Mutex<Option<crate::error::WgpuError>>,
}

/// What crossed between the host and the device through a context: tensors uploaded
/// ([`LossContext::upload`] and its kin) and tensors read back ([`LossContext::read`] and its
/// kin), counted since the context was made. The few bytes of each kernel's parameters are not
/// tensors and are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferStats {
    /// Tensors uploaded from the host.
    pub uploads: u64,
    /// Their bytes.
    pub upload_bytes: u64,
    /// Tensors read back to the host.
    pub reads: u64,
    /// Their bytes.
    pub read_bytes: u64,
}

#[derive(Default)]
struct Transfers {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
}

/// Owns the device, the pipelines and the device buffers. `Send + Sync`: one context can serve
/// several threads.
pub struct LossContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    report: AdapterReport,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    pub(crate) max_window_bytes: u64,
    /// The subgroup size where the workgroup reductions use subgroups (see `subgroup_size`).
    pub(crate) subgroup_size: Option<u32>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) check_finite: bool,
    /// Whether the kernels tuned for CPU adapters are chosen (`ContextOptions::cpu_kernels`).
    pub(crate) cpu_kernels: bool,
    state: Arc<DeviceState>,
    gl_serial: Option<parking_lot::ReentrantMutex<()>>,
    pub(crate) home: Home,
    transfers: Transfers,
    /// A running step profile (`LossContext::profile_steps`), if any.
    pub(crate) profile: parking_lot::Mutex<Option<StepProfile>>,
}

/// Timestamps around each recorded step while a profile runs.
pub(crate) struct StepProfile {
    pub(crate) queries: wgpu::QuerySet,
    /// Timestamps the query set holds (two per step).
    pub(crate) capacity: u32,
    /// The label of each step timed so far, in order.
    pub(crate) labels: Vec<String>,
}

impl std::fmt::Debug for LossContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossContext")
            .field("adapter", &self.report.summary())
            .field("subgroup_size", &self.subgroup_size)
            .field("check_finite", &self.check_finite)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Bytes of the device error flags (4 words).
pub(crate) const FLAG_BYTES: u64 = 16;

/// The error flags of one computation, for kernels that find bad data on the device: word 0 is
/// set to 1 by a label out of range, word 1 by a non-finite input (check_finite). The tensors
/// the computation returns hold it, and reading any of them fails when a word is set, so an
/// error reaches exactly the results it affects (and no other thread's).
pub(crate) struct Flag {
    pub(crate) buf: PoolBuf,
    pub(crate) what: String,
}

impl LossContext {
    /// The best adapter, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async(ContextOptions::default()))
    }

    /// A context with options, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// A context on the best adapter that `opts` allow, requesting the adapter's own limits and
    /// the optional features it has (subgroups, shader-f16; timestamp queries where
    /// `opts.timestamps` asks for them).
    pub async fn new_async(opts: ContextOptions) -> Result<Self> {
        let (_, adapter) = pick_adapter(&opts).await?;
        let mut wanted = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        if opts.timestamps {
            wanted |=
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("deepml"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{}: request_device failed: {e}",
                    AdapterReport::of(&adapter).summary()
                ))
            })?;
        let report = AdapterReport::of(&adapter);
        let home = Home::fresh(&report.name);
        Ok(Self::build(device, queue, report, home, &opts, true))
    }

    /// Wraps a caller's device and queue, so that a model on that device hands its buffers over
    /// without a copy. `info` names the adapter in reports.
    ///
    /// Contexts made this way over one wgpu device share their tensors: a tensor of one can be
    /// passed to the other. A tensor of any other context is refused with
    /// `Error::InvalidInput`. (wgpu tells devices apart by an id that is unique within one wgpu
    /// instance; wrap devices of one instance.)
    ///
    /// The caller's device keeps its own uncaptured-error handler and device-lost callback (wgpu
    /// replaces handlers rather than chaining them, so installing deepml's would silence the
    /// caller's): deepml's own errors are captured by the error scopes around its every call,
    /// and a lost device shows as `DeviceLost` from the next wait on it.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self::from_device_with(device, queue, info, &ContextOptions::default())
    }

    /// [`Self::from_device`] with options (`backends` and `adapter_name` do not apply: the
    /// device is the caller's).
    pub fn from_device_with(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: &ContextOptions,
    ) -> Self {
        let report = AdapterReport::from_parts(info, device.limits(), device.features());
        let home = Home::of_wrapped(&device, &report.name);
        Self::build(device, queue, report, home, opts, false)
    }

    /// A context over `device`; `handlers`: install deepml's uncaptured-error handler and
    /// device-lost callback (only on a device deepml made and nobody else shares).
    pub(crate) fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        report: AdapterReport,
        home: Home,
        opts: &ContextOptions,
        handlers: bool,
    ) -> Self {
        let state = Arc::new(DeviceState {
            lost: Mutex::new(None),
            sticky: Mutex::new(None),
        });
        if handlers {
            let s = state.clone();
            device.set_device_lost_callback(move |reason, msg| {
                if let Ok(mut l) = s.lost.lock() {
                    *l = Some(format!("{reason:?}: {msg}"));
                }
            });
            let s = state.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut st) = s.sticky.lock() {
                    st.get_or_insert_with(|| crate::error::WgpuError::capture(&e));
                }
            }));
        }
        let limits = device.limits();
        let features = device.features();
        // Windows stay under the binding limit and under 2^30 elements so u32 indices are safe.
        let mut max_window_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(1u64 << 32);
        if let Some(cap) = opts.max_window_bytes {
            max_window_bytes = max_window_bytes.min(cap.max(256));
        }
        let subgroup_size =
            if features.contains(wgpu::Features::SUBGROUP) && !opts.disable_subgroups {
                probe_subgroups(&device, &queue, report.subgroup_sizes)
            } else {
                None
            };
        let gl_serial =
            (report.backend == wgpu::Backend::Gl).then(|| parking_lot::ReentrantMutex::new(()));
        let cpu_kernels = opts
            .cpu_kernels
            .unwrap_or(report.device_type == wgpu::DeviceType::Cpu);

        LossContext {
            device,
            queue,
            report,
            limits,
            features,
            max_window_bytes,
            subgroup_size,
            pipelines: Mutex::new(HashMap::new()),
            check_finite: opts.check_finite,
            cpu_kernels,
            gl_serial,
            pool: Arc::new(Pool::new(opts.pool_cap)),
            state,
            home,
            transfers: Transfers::default(),
            profile: parking_lot::Mutex::new(None),
        }
    }

    /// Refuses a tensor that lives on another device than this context's: `what` names the
    /// call, `name` the input. Compares two ids.
    pub(crate) fn owns(&self, what: &str, name: &str, t: &Tensor) -> Result<()> {
        if t.home().id() == self.home.id() {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "{what}: {name} lives on {}, but this context works on {}; a tensor can only be used \
             by the context that made it (or another context over the same wgpu device)",
            t.home().describe(),
            self.home.describe()
        )))
    }

    /// The adapter: name, backend, device type, driver, limits and features.
    pub fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    /// The wgpu device, to record one's own work next to the losses.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Whether the shaders use subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroup_size.is_some()
    }

    /// The subgroup size of the workgroup reductions: where the adapter has SUBGROUP, runs
    /// subgroups of one fixed size, and a probe at start found each subgroup to be consecutive
    /// local invocation indices (what shaders/wg_subgroup.wgsl relies on). None: the barrier
    /// tree of shaders/wg_tree.wgsl.
    pub fn subgroup_size(&self) -> Option<u32> {
        self.subgroup_size
    }

    /// Whether the device can take f16 inputs.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Allocation statistics.
    pub fn stats(&self) -> AllocStats {
        AllocStats {
            allocated_bytes: self.pool.allocated.load(Ordering::Relaxed),
            pooled_bytes: self.pool.pooled.load(Ordering::Relaxed),
            buffers_created: self.pool.created.load(Ordering::Relaxed),
            pool_hits: self.pool.hits.load(Ordering::Relaxed),
            buffers_released: self.pool.released.load(Ordering::Relaxed),
        }
    }

    /// Milliseconds of each step that `record` puts into an encoder, timed with timestamps
    /// around a compute pass per step (the benchmark's `--steps`): `(label, ms)` in order, the
    /// label `shader:CONST=value..::entry`. None without [`wgpu::Features::TIMESTAMP_QUERY`]
    /// (wgpu's GL back end); at most `max_steps` steps are timed (the rest run untimed).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn profile_steps<K>(
        &self,
        max_steps: u32,
        record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<K>,
    ) -> Result<Vec<(String, f64)>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(Vec::new());
        }
        let capacity = 2 * max_steps.max(1);
        let queries = self.scoped(|| {
            Ok(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("deepml steps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            }))
        })?;
        *self.profile.lock() = Some(StepProfile {
            queries,
            capacity,
            labels: Vec::new(),
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        let recorded = record(&mut enc);
        let profile = self.profile.lock().take();
        let keep = recorded?;
        let Some(p) = profile.filter(|p| !p.labels.is_empty()) else {
            return Ok(Vec::new());
        };
        // Resolved into a pooled buffer, then read back like a tensor (map_staging).
        let bytes = 16 * p.labels.len() as u64;
        let resolve = self.alloc(
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let staging = self.alloc(
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.scoped(|| {
            let n = 2 * p.labels.len() as u32;
            enc.resolve_query_set(&p.queries, 0..n, &resolve.buffer, 0);
            enc.copy_buffer_to_buffer(&resolve.buffer, 0, &staging.buffer, 0, bytes);
            self.queue.submit(Some(enc.finish()));
            Ok(())
        })?;
        let raw = pollster::block_on(self.map_staging(&staging, bytes))?;
        drop(keep);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.queue.get_timestamp_period() as f64;
        Ok(p.labels
            .into_iter()
            .zip(ticks.chunks_exact(2))
            .map(|(l, t)| (l, t[1].saturating_sub(t[0]) as f64 * period / 1e6))
            .collect())
    }

    /// The tensors that crossed between host and device through this context so far.
    pub fn transfers(&self) -> TransferStats {
        let t = &self.transfers;
        TransferStats {
            uploads: t.uploads.load(Ordering::Relaxed),
            upload_bytes: t.upload_bytes.load(Ordering::Relaxed),
            reads: t.reads.load(Ordering::Relaxed),
            read_bytes: t.read_bytes.load(Ordering::Relaxed),
        }
    }

    /// Releases every pooled buffer back to the device.
    pub fn trim_pool(&self) {
        let _serial = self.serial();
        if let Ok(mut free) = self.pool.free.lock() {
            self.pool.evict_to(&mut free, 0);
        }
    }

    /// On GL, one thread at a time talks to the device: wgpu's GL backend gives up (panics) when
    /// a thread waits more than a second for the GL context, which a long kernel on a software
    /// GL holds. Re-entrant, so nested operations of one thread pass. Elsewhere: no lock.
    pub(crate) fn serial(&self) -> Option<parking_lot::ReentrantMutexGuard<'_, ()>> {
        self.gl_serial.as_ref().map(|m| m.lock())
    }

    /// Fails with `DeviceLost` once the device is gone, and with the first uncaptured wgpu
    /// error since the last check.
    pub fn check(&self) -> Result<()> {
        if let Some(m) = self.state.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(m));
        }
        if let Some(m) = self.state.sticky.lock().ok().and_then(|mut s| s.take()) {
            return Err(Error::Wgpu(m));
        }
        Ok(())
    }

    /// Destroys the device (as a driver reset would). Every later call returns `DeviceLost`.
    pub fn destroy(&self) {
        self.device.destroy();
        // wgpu calls the lost callback on destroy; make sure the flag is set even if it doesn't.
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Ok(mut l) = self.state.lost.lock() {
            l.get_or_insert_with(|| "Destroyed: the device was destroyed".into());
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes; an error captured there comes
    /// back as `Error::Wgpu`. On the web the scopes resolve later and the error is reported by
    /// the next read.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _serial = self.serial();
        self.check()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = val.pop();
        let o = oom.pop();
        self.settle(v);
        self.settle(o);
        let r = r?;
        self.check()?;
        Ok(r)
    }

    fn settle(&self, fut: impl Future<Output = Option<wgpu::Error>> + 'static) {
        let state = self.state.clone();
        let record = move |e: Option<wgpu::Error>| {
            if let (Some(e), Ok(mut s)) = (e, state.sticky.lock()) {
                s.get_or_insert_with(|| crate::error::WgpuError::capture(&e));
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        record(pollster::block_on(fut));
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_futures::spawn_local(async move { record(fut.await) });
    }

    /// A device buffer of at least `size` bytes (its size class, see [`size_class`]), from the
    /// pool when one of that class is free.
    pub(crate) fn alloc(&self, size: u64, usage: wgpu::BufferUsages) -> Result<PoolBuf> {
        let want = size.max(4).div_ceil(4) * 4;
        if want > self.limits.max_buffer_size {
            return Err(Error::TooLarge(format!(
                "{want} bytes asked for, but the device's max_buffer_size is {}",
                self.limits.max_buffer_size
            )));
        }
        let size = size_class(want, &self.limits);
        let key = (size, usage.bits());
        let _serial = self.serial();
        let pooled = self.pool.free.lock().ok().and_then(|mut free| {
            free.clock += 1;
            let clock = free.clock;
            if clock.is_multiple_of(POOL_TRIM_EVERY) && clock > POOL_IDLE_ALLOCS {
                self.pool
                    .release_older_than(&mut free, clock - POOL_IDLE_ALLOCS);
            }
            let cap = self.pool.cap(&free);
            self.pool.evict_to(&mut free, cap);
            // The most recently returned buffer of the class: the one least likely to be
            // released for idleness.
            let b = free
                .by_key
                .get_mut(&key)
                .and_then(|v| v.pop())
                .map(|(_, b)| b);
            if free.by_key.get(&key).is_some_and(|v| v.is_empty()) {
                free.by_key.remove(&key);
            }
            b
        });
        let buffer = match pooled {
            Some(b) => {
                self.pool.pooled.fetch_sub(size, Ordering::Relaxed);
                self.pool.hits.fetch_add(1, Ordering::Relaxed);
                b
            }
            None => {
                let buffer = self.scoped(|| {
                    Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("deepml"),
                        size,
                        usage,
                        mapped_at_creation: false,
                    }))
                })?;
                self.pool.allocated.fetch_add(size, Ordering::Relaxed);
                self.pool.created.fetch_add(1, Ordering::Relaxed);
                buffer
            }
        };
        if let Ok(mut free) = self.pool.free.lock() {
            let live = self
                .pool
                .allocated
                .load(Ordering::Relaxed)
                .saturating_sub(self.pool.pooled.load(Ordering::Relaxed));
            free.live_high = free.live_high.max(live);
        }
        Ok(PoolBuf {
            buffer,
            pool: Some(self.pool.clone()),
        })
    }

    pub(crate) fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// A new tensor of `shape` whose contents are undefined until a kernel writes it.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = crate::tensor::checked_numel(shape)?;
        let bytes = (n as u64).checked_mul(dtype.size()).ok_or_else(|| {
            Error::TooLarge(format!(
                "a tensor of shape {shape:?} does not fit in 64-bit sizes"
            ))
        })?;
        let buf = self.alloc(bytes, Self::storage_usage())?;
        Ok(Tensor::new(
            Arc::new(buf),
            shape.to_vec(),
            dtype,
            self.home.clone(),
        ))
    }

    /// A new tensor with the same shape, type and values (copied on the device). It does not
    /// carry the error flags of the computation that made `t`.
    pub fn copy(&self, t: &Tensor) -> Result<Tensor> {
        self.owns("copy", "the tensor", t)?;
        let out = self.empty(t.shape(), t.dtype())?;
        self.scoped(|| {
            let mut enc = self.device.create_command_encoder(&Default::default());
            if t.padded_len() > 0 {
                enc.copy_buffer_to_buffer(t.buffer(), t.offset(), out.buffer(), 0, t.padded_len());
            }
            self.queue.submit(Some(enc.finish()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Uploads f32 values as a tensor of `shape`.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape, DType::F32)
    }

    /// Uploads f32 values as an f16 tensor of `shape` (rounded to nearest even), for the
    /// pointwise and segmentation losses on adapters with SHADER_F16.
    pub fn upload_f16(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let h: Vec<u16> = data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        self.upload_bytes(bytemuck::cast_slice(&h), h.len(), shape, DType::F16)
    }

    /// Uploads class labels as an i32 tensor of `shape`.
    pub fn upload_labels(&self, labels: &[i32], shape: &[usize]) -> Result<Tensor> {
        self.upload_bytes(
            bytemuck::cast_slice(labels),
            labels.len(),
            shape,
            DType::I32,
        )
    }

    /// Uploads i64 class labels (as PyTorch holds them); each must fit in i32.
    pub fn upload_labels_i64(&self, labels: &[i64], shape: &[usize]) -> Result<Tensor> {
        let l: Vec<i32> = labels
            .iter()
            .map(|&v| {
                i32::try_from(v).map_err(|_| {
                    Error::LabelOutOfRange(format!("label {v} does not fit in 32 bits"))
                })
            })
            .collect::<Result<_>>()?;
        self.upload_labels(&l, shape)
    }

    fn upload_bytes(
        &self,
        bytes: &[u8],
        len: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let n = crate::tensor::checked_numel(shape)?;
        if n != len {
            return Err(Error::ShapeMismatch(format!(
                "shape {shape:?} holds {n} elements but {len} values were given"
            )));
        }
        let t = self.empty(shape, dtype)?;
        self.transfers.uploads.fetch_add(1, Ordering::Relaxed);
        self.transfers
            .upload_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if !bytes.is_empty() {
            self.scoped(|| {
                if bytes.len().is_multiple_of(4) {
                    self.queue.write_buffer(t.buffer(), t.offset(), bytes);
                } else {
                    // Copies go in 4-byte units; the buffer is allocated padded.
                    let mut padded = bytes.to_vec();
                    padded.resize(bytes.len().div_ceil(4) * 4, 0);
                    self.queue.write_buffer(t.buffer(), t.offset(), &padded);
                }
                Ok(())
            })?;
        }
        Ok(t)
    }

    /// Builds (once) and returns the pipeline of `entry` in the composed shader `source`, cached
    /// under `key`.
    pub(crate) fn pipeline(
        &self,
        key: &str,
        source: impl FnOnce() -> String,
        entry: &str,
    ) -> Result<wgpu::ComputePipeline> {
        self.pipeline_of(key, source, entry, false)
    }

    /// `pipeline`, from a trusted module where `trusted` (no bounds checks or loop counters:
    /// for kernels whose accesses are in range by construction, src/matmul.rs).
    pub(crate) fn pipeline_of(
        &self,
        key: &str,
        source: impl FnOnce() -> String,
        entry: &str,
        trusted: bool,
    ) -> Result<wgpu::ComputePipeline> {
        let full_key = format!("{key}::{entry}");
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(&full_key).cloned())
        {
            return Ok(p);
        }
        let src = source();
        let p = self.scoped(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            };
            let module = if trusted {
                // SAFETY: only kernels whose every access is in range and whose loops end by
                // construction ask for this (src/matmul.rs, checked by MatmulSpec::check).
                unsafe {
                    self.device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            } else {
                // Every access bounds-checked, but no loop counters: naga's counter on every
                // loop guards against loops that never end, and costs lavapipe up to 1.6x on
                // the per-position sweeps (cross-entropy over 64 classes).
                let mut checks = wgpu::ShaderRuntimeChecks::checked();
                checks.force_loop_bounding = false;
                // SAFETY: every loop in shaders/ ends: each is a `for` whose counter starts
                // below a bound that is a constant or a uniform count of elements (under 2^31,
                // the most a binding holds) and steps up by a constant or a workgroup size, so
                // it never wraps; the tree reductions halve a constant width.
                unsafe { self.device.create_shader_module_trusted(desc, checks) }
            };
            Ok(self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&full_key),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                }))
        })?;
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(full_key, p.clone());
        }
        Ok(p)
    }

    /// Number of pipelines built so far (each is built once).
    pub fn pipelines_built(&self) -> usize {
        self.pipelines.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Reads a tensor's bytes back to the host.
    pub async fn read_bytes_async(&self, t: &Tensor) -> Result<Vec<u8>> {
        self.owns("read", "the tensor", t)?;
        let bytes = t.byte_len();
        // The error flags of the computation that made this tensor are read in the same copy.
        let flag = t.flag();
        let armed = flag.is_some();
        self.transfers.reads.fetch_add(1, Ordering::Relaxed);
        self.transfers
            .read_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if bytes == 0 && !armed {
            return Ok(Vec::new());
        }
        let padded = bytes.div_ceil(4) * 4;
        let total = padded + if armed { FLAG_BYTES } else { 0 };
        let staging = self.alloc(
            total,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.scoped(|| {
            let mut enc = self.device.create_command_encoder(&Default::default());
            if padded > 0 {
                enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging.buffer, 0, padded);
            }
            if let Some(f) = flag {
                enc.copy_buffer_to_buffer(&f.buf.buffer, 0, &staging.buffer, padded, FLAG_BYTES);
            }
            self.queue.submit(Some(enc.finish()));
            Ok(())
        })?;
        let mut out = self.map_staging(&staging, total).await?;
        if let Some(f) = flag {
            let at = padded as usize;
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&out[at..at + FLAG_BYTES as usize]);
            let what = &f.what;
            if words[0] != 0 {
                return Err(Error::LabelOutOfRange(format!(
                    "{what}: a label on the device is outside the class range; the rows that hold one were skipped"
                )));
            }
            if words[1] != 0 {
                return Err(Error::InvalidInput(format!(
                    "{what}: an input holds NaN or infinity (check_finite is on)"
                )));
            }
        }
        out.truncate(bytes as usize);
        Ok(out)
    }

    /// Maps a staging buffer (MAP_READ) whose copies were submitted and reads its first
    /// `total` bytes; it is unmapped again on every path.
    pub(crate) async fn map_staging(
        &self,
        staging: &crate::pool::PoolBuf,
        total: u64,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let serial = self.serial();
        staging
            .buffer
            .map_async(wgpu::MapMode::Read, 0..total, move |r| {
                let _ = tx.send(r);
            });
        #[cfg(not(target_arch = "wasm32"))]
        let waited = self
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(format!("waiting for the device failed: {e}")));
        drop(serial);
        #[cfg(target_arch = "wasm32")]
        let waited: Result<()> = Ok(());
        let mapped = rx
            .await
            .map_err(|_| Error::DeviceLost("the read-back was cancelled".into()));
        let out = match mapped {
            Ok(Ok(())) => {
                let _serial = self.serial();
                let data = staging
                    .buffer
                    .get_mapped_range(0..total)
                    .map(|view| view.to_vec())
                    .map_err(|e| Error::wgpu(format!("reading the mapped range failed: {e:?}")));
                // Unmapped on every path, so the pooled buffer can be mapped again.
                staging.buffer.unmap();
                data
            }
            Ok(Err(e)) => Err(Error::wgpu(format!(
                "mapping the read-back buffer failed: {e}"
            ))),
            Err(e) => Err(e),
        };
        waited?;
        self.check()?;
        out
    }

    /// A zeroed error-flag buffer for one computation (see [`Flag`]).
    pub(crate) fn new_flag(&self, what: &str) -> Result<Flag> {
        let buf = self.alloc(FLAG_BYTES, Self::storage_usage())?;
        self.queue
            .write_buffer(&buf.buffer, 0, &[0u8; FLAG_BYTES as usize]);
        Ok(Flag {
            buf,
            what: what.to_string(),
        })
    }

    /// Reads an f32 tensor back.
    pub async fn read_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.dtype() != DType::F32 {
            return Err(Error::InvalidInput(format!(
                "read needs an f32 tensor, this one is {:?}",
                t.dtype()
            )));
        }
        let b = self.read_bytes_async(t).await?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    /// Reads an f32 tensor back, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }

    /// Reads an f16 tensor back as f32 values, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f16(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.dtype() != DType::F16 {
            return Err(Error::InvalidInput(format!(
                "read_f16 needs an f16 tensor, this one is {:?}",
                t.dtype()
            )));
        }
        let b = pollster::block_on(self.read_bytes_async(t))?;
        Ok(b.chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect())
    }

    /// Reads an i32 tensor back, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        if t.dtype() != DType::I32 {
            return Err(Error::InvalidInput(format!(
                "read_i32 needs an i32 tensor, this one is {:?}",
                t.dtype()
            )));
        }
        let b = pollster::block_on(self.read_bytes_async(t))?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    /// Reads a scalar (or the first element) of an f32 tensor, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_scalar(&self, t: &Tensor) -> Result<f32> {
        self.read(t)?
            .first()
            .copied()
            .ok_or_else(|| Error::EmptyInput("read_scalar of an empty tensor".into()))
    }

    /// Blocks until the device has finished all submitted work (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn synchronize(&self) -> Result<()> {
        let _serial = self.serial();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(format!("waiting for the device failed: {e}")))?;
        self.check()
    }
}
