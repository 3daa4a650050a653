//! GPU kernels compiled from `kernels/*.cu` by `build.rs`, with typed launchers.
//!
//! The PTX is embedded in the library ([`PTX`]) and loaded once per [`Context`] on first use
//! (`cuModuleLoadData`). Each kernel has a CPU reference in [`reference`](mod@reference) that computes exactly
//! the same values, so a process can check what another process's GPU wrote:
//!
//! ```no_run
//! use cuda_ipc::prelude::*;
//! use cuda_ipc::kernels::reference;
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let k = ctx.kernels()?;
//! let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 20)?;
//! k.fill_pattern(&stream, &mut buf, 7)?;
//! assert_eq!(k.checksum(&stream, &buf)?, reference::pattern_checksum(7, 1 << 20));
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! Kernels that work on 32-bit words (`fill_pattern`, `transform_words`, `add_words_atomic`,
//! `checksum`, `fill_frame`, `verify_frame`) accept a buffer of any element type whose byte
//! length is a multiple of 4 and whose address is 4-byte aligned; the others are typed.
//!
//! The frame kernels serve the channel examples: a publisher fills each frame with
//! [`fill_frame`](Kernels::fill_frame) for its sequence number, every subscriber checks it on
//! its own GPU with [`verify_frame`](Kernels::verify_frame) into a device counter that is read
//! once at the end, and [`stamp_time`](Kernels::stamp_time) records when a stream reached a
//! point (the GPU's global nanosecond timer), for latencies measured without a CPU sync.

pub mod reference;

use std::ffi::c_void;

use bytemuck::Pod;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::launch::LaunchConfig;
use crate::memory::{DeviceBuffer, DeviceMemory, DeviceMemoryMut};
use crate::module::ImageKind;
use crate::result::{self, CUdeviceptr, CUfunction, CUmodule};
use crate::stream::Stream;

/// The PTX of `kernels/cuda_ipc.cu`, as built by `build.rs`.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_ipc.ptx"));
/// Where [`PTX`] came from: `"committed"` (the copy under `kernels/`, PTX ISA 8.0, the
/// default) or `"nvcc"` (compiled at build time, with `CUDA_IPC_BUILD_PTX=1`).
pub const PTX_ORIGIN: &str = env!("CUDA_IPC_PTX_ORIGIN");
/// The virtual architecture the PTX was compiled for, e.g. `compute_75`.
pub const PTX_ARCH: &str = env!("CUDA_IPC_PTX_ARCH");
/// The `release …` line of the nvcc that compiled it, or `none`.
pub const NVCC_VERSION: &str = env!("CUDA_IPC_NVCC_VERSION");
/// The kernels' entry points, as `.entry` names in the PTX.
pub const ENTRY_POINTS: &[&str] = &[
    "fill_pattern",
    "iota_u32",
    "transform_words",
    "scale_add_f32",
    "checksum",
    "add_words_atomic",
    "fill_frame",
    "verify_frame",
    "stamp_time",
];

const BLOCK: u32 = 256;

/// The loaded module of a context; owned by the [`Context`], unloaded when it drops.
pub(crate) struct KernelModule {
    module: CUmodule,
    functions: [CUfunction; ENTRY_POINTS.len()],
    max_grid: u32,
}

impl KernelModule {
    pub(crate) fn load(ctx: &Context) -> Result<Self> {
        // Bound for the whole load, so that the cleanups below unload in the right context.
        let _bound = ctx.bind()?;
        let module = crate::module::load_checked(ctx, PTX.as_bytes(), ImageKind::Ptx)?;
        let unload = |why: Error| {
            // SAFETY: unloading the module we loaded (its context is current); nothing else
            // uses it yet.
            crate::drop_log::check(
                "kernel module (cuModuleUnload after a failed load)",
                unsafe { result::module_unload(module) },
            );
            why
        };
        let mut functions = [std::ptr::null_mut(); ENTRY_POINTS.len()];
        for (slot, name) in functions.iter_mut().zip(ENTRY_POINTS) {
            // SAFETY: `module` was just loaded and is live.
            match unsafe { crate::module::function_checked(ctx, module, name, None) } {
                Ok(f) => *slot = f,
                Err(e) => return Err(unload(e)),
            }
        }
        let sms = match ctx.device().multiprocessor_count() {
            Ok(n) => n.max(1),
            Err(e) => return Err(unload(e)),
        };
        Ok(KernelModule {
            module,
            functions,
            max_grid: sms.saturating_mul(8),
        })
    }

    /// Unloads; the owning context must be current.
    pub(crate) fn unload(self) {
        // SAFETY: called once, from the context's drop, after every user of it is gone.
        crate::drop_log::check("kernel module (cuModuleUnload)", unsafe {
            result::module_unload(self.module)
        });
    }
}

/// The kernels of one context. Get it with [`Context::kernels`].
#[derive(Clone, Copy)]
pub struct Kernels<'ctx> {
    ctx: &'ctx Context,
    module: &'ctx KernelModule,
}

impl std::fmt::Debug for Kernels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({:?})", self.ctx.device())
    }
}

impl Context {
    /// The kernels, loading the module into this context on first use.
    pub fn kernels(&self) -> Result<Kernels<'_>> {
        Ok(Kernels {
            ctx: self,
            module: self.kernel_module()?,
        })
    }
}

/// A device pointer and a word count, checked for word alignment.
fn words(ptr: CUdeviceptr, bytes: usize, what: &str) -> Result<(CUdeviceptr, u64)> {
    if bytes % 4 != 0 || ptr % 4 != 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} works on 32-bit words: the memory must be 4-byte aligned and a multiple of \
             4 bytes long (address {ptr:#x}, {bytes} bytes)"
        )));
    }
    Ok((ptr, (bytes / 4) as u64))
}

impl<'ctx> Kernels<'ctx> {
    fn grid(&self, n: u64) -> u32 {
        let blocks = n.div_ceil(BLOCK as u64).max(1);
        blocks.min(self.module.max_grid as u64) as u32
    }

    fn launch(
        &self,
        index: usize,
        n: u64,
        stream: &Stream<'_>,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        if n == 0 {
            return crate::launch::check_launch_stream(self.ctx, stream, ENTRY_POINTS[index]);
        }
        let config = LaunchConfig {
            grid: (self.grid(n), 1, 1),
            block: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_config(index, &config, stream, params)
    }

    fn launch_config(
        &self,
        index: usize,
        config: &LaunchConfig,
        stream: &Stream<'_>,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        // SAFETY: each launcher below passes one pointer per kernel parameter, to a value of
        // the parameter's exact type (u64 device pointers, u64 counts and indices, u32/f32
        // scalars), and has checked that the memory covers what the kernel touches (`n`
        // elements for the grid-stride kernels, element `index` for stamp_time). The memory
        // outlives the launch: each launcher records it as used by `stream`, and memory waits
        // for the streams that used it before it is freed. The function is of this context's
        // module.
        unsafe {
            crate::launch::launch_raw(
                self.ctx,
                self.module.functions[index],
                ENTRY_POINTS[index],
                config,
                stream,
                params,
            )
        }
    }

    fn check_memory<T: Pod>(&self, mem: &impl DeviceMemory<T>, what: &str) -> Result<()> {
        if mem.view().context().raw() != self.ctx.raw() {
            return Err(Error::InvalidArgument(format!(
                "{what}: the memory is mapped in {:?}, the kernels belong to {:?}",
                mem.view().context().device(),
                self.ctx.device()
            )));
        }
        Ok(())
    }

    /// Launches kernel `index`, whose parameters are `(uint32_t *words, uint64_t n, uint32_t x)`,
    /// on the words of `buf`.
    fn word_kernel<T: Pod>(
        &self,
        index: usize,
        name: &str,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<T>,
        x: u32,
    ) -> Result<()> {
        self.check_memory(buf, name)?;
        let view = buf.view_mut();
        let (mut ptr, mut n) = words(view.device_ptr(), view.byte_len(), name)?;
        let mut x = x;
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut x as *mut u32).cast(),
        ];
        self.launch(index, n, stream, &mut params)?;
        view.record_use(stream)
    }

    /// Fills the words of `buf` with the deterministic pattern of `seed`
    /// ([`reference::pattern_word`]).
    pub fn fill_pattern<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<T>,
        seed: u32,
    ) -> Result<()> {
        self.word_kernel(0, "fill_pattern", stream, buf, seed)
    }

    /// `buf[i] = start + i` (wrapping).
    pub fn iota_u32(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<u32>,
        start: u32,
    ) -> Result<()> {
        self.check_memory(buf, "iota_u32")?;
        let view = buf.view_mut();
        let (mut ptr, mut n) = (view.device_ptr(), view.len() as u64);
        let mut start = start;
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut start as *mut u32).cast(),
        ];
        self.launch(1, n, stream, &mut params)?;
        view.record_use(stream)
    }

    /// Transforms every word in place: `w = w * 0x9E3779B1 + key` (wrapping;
    /// [`reference::transform_word`]).
    pub fn transform_words<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<T>,
        key: u32,
    ) -> Result<()> {
        self.word_kernel(2, "transform_words", stream, buf, key)
    }

    /// Adds `value` to every word, atomically (wrapping), so that several processes can add to
    /// one shared buffer at the same time ([`reference::add_word`]).
    pub fn add_words_atomic<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<T>,
        value: u32,
    ) -> Result<()> {
        self.word_kernel(5, "add_words_atomic", stream, buf, value)
    }

    /// `x[i] = a * x[i] + b` with one fused multiply-add ([`reference::scale_add_f32`]).
    pub fn scale_add_f32(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<f32>,
        a: f32,
        b: f32,
    ) -> Result<()> {
        self.check_memory(buf, "scale_add_f32")?;
        let view = buf.view_mut();
        let (mut ptr, mut n) = (view.device_ptr(), view.len() as u64);
        let (mut a, mut b) = (a, b);
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut a as *mut f32).cast(),
            (&mut b as *mut f32).cast(),
        ];
        self.launch(3, n, stream, &mut params)?;
        view.record_use(stream)
    }

    /// Queues the digest of `buf`'s words ([`reference::checksum_words`]) into `out[0]`,
    /// which is zeroed first. Nothing waits: read `out` after the stream is done.
    pub fn checksum_into<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &impl DeviceMemory<T>,
        out: &mut impl DeviceMemoryMut<u64>,
    ) -> Result<()> {
        self.check_memory(buf, "checksum")?;
        self.check_memory(out, "checksum output")?;
        let mut out_view = out.view_mut();
        if out_view.len() != 1 {
            return Err(Error::LengthMismatch {
                what: "checksum output",
                expected: 1,
                actual: out_view.len(),
            });
        }
        out_view.zero_async(stream)?;
        let view = buf.view();
        let (mut ptr, mut n) = words(view.device_ptr(), view.byte_len(), "checksum")?;
        let mut out_ptr = out_view.device_ptr();
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut out_ptr as *mut u64).cast(),
        ];
        self.launch(4, n, stream, &mut params)?;
        let recorded = view.record_use(stream);
        recorded.and(out_view.record_use(stream))
    }

    /// Fills the words of `buf` with frame `seq` ([`reference::frame_word`]): what a
    /// publisher writes into a loaned slot and [`verify_frame`](Self::verify_frame) checks.
    pub fn fill_frame<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &mut impl DeviceMemoryMut<T>,
        seq: u64,
    ) -> Result<()> {
        self.check_memory(buf, "fill_frame")?;
        let view = buf.view_mut();
        let (mut ptr, mut n) = words(view.device_ptr(), view.byte_len(), "fill_frame")?;
        let mut seq = seq;
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut seq as *mut u64).cast(),
        ];
        self.launch(6, n, stream, &mut params)?;
        view.record_use(stream)
    }

    /// Queues the check of `buf` against frame `seq`: ADDS the number of words that differ
    /// from [`reference::frame_word`] to `errors[0]` (atomically; it is not zeroed, so one
    /// counter can sum the errors of many frames). Nothing waits: read `errors` after the
    /// stream is done. `errors` must hold at least one element; only the first is touched.
    pub fn verify_frame<T: Pod>(
        &self,
        stream: &Stream<'_>,
        buf: &impl DeviceMemory<T>,
        seq: u64,
        errors: &mut impl DeviceMemoryMut<u32>,
    ) -> Result<()> {
        self.check_memory(buf, "verify_frame")?;
        self.check_memory(errors, "verify_frame error counter")?;
        let errors_view = errors.view_mut();
        if errors_view.is_empty() {
            return Err(Error::InvalidArgument(
                "verify_frame: the error counter is empty; pass a buffer of at least one u32 \
                 (zeroed before the first frame)"
                    .into(),
            ));
        }
        let view = buf.view();
        let (mut ptr, mut n) = words(view.device_ptr(), view.byte_len(), "verify_frame")?;
        let mut seq = seq;
        let mut errors_ptr = errors_view.device_ptr();
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut n as *mut u64).cast(),
            (&mut seq as *mut u64).cast(),
            (&mut errors_ptr as *mut u64).cast(),
        ];
        self.launch(7, n, stream, &mut params)?;
        let recorded = view.record_use(stream);
        recorded.and(errors_view.record_use(stream))
    }

    /// Queues `out[index] = ` the GPU's global timer (`%globaltimer`, nanoseconds) at the
    /// moment `stream` reaches this point. Differences of stamps of one GPU are exact to the
    /// timer's update interval (often a microsecond). The driver sets each GPU's timer from
    /// the host clock, so stamps of two GPUs of one machine can be subtracted, but NVIDIA does
    /// not document how closely they agree: treat cross-GPU differences as approximate.
    /// `index` past the end of `out` is [`Error::InvalidArgument`].
    pub fn stamp_time(
        &self,
        stream: &Stream<'_>,
        out: &mut impl DeviceMemoryMut<u64>,
        index: usize,
    ) -> Result<()> {
        self.check_memory(out, "stamp_time")?;
        let view = out.view_mut();
        if index >= view.len() {
            return Err(Error::InvalidArgument(format!(
                "stamp_time: index {index} is past the end of the {}-element output",
                view.len()
            )));
        }
        let mut ptr = view.device_ptr();
        let mut index = index as u64;
        let mut params = [
            (&mut ptr as *mut u64).cast(),
            (&mut index as *mut u64).cast(),
        ];
        let one = LaunchConfig {
            grid: (1, 1, 1),
            block: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_config(8, &one, stream, &mut params)?;
        view.record_use(stream)
    }

    /// The digest of `buf`'s words, computed on the GPU; waits for `stream`.
    pub fn checksum<T: Pod>(&self, stream: &Stream<'_>, buf: &impl DeviceMemory<T>) -> Result<u64> {
        let mut out = DeviceBuffer::<u64>::zeroed(self.ctx, 1)?;
        self.checksum_into(stream, buf, &mut out)?;
        stream.synchronize()?;
        Ok(out.copy_to_vec()?[0])
    }
}

/// The entry points of [`ENTRY_POINTS`] that `ptx` does not declare as visible entries
/// (empty when all are there).
pub fn missing_entry_points(ptx: &str) -> Vec<&'static str> {
    ENTRY_POINTS
        .iter()
        .copied()
        .filter(|name| !ptx.contains(&format!(".visible .entry {name}(")))
        .collect()
}
