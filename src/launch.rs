//! Launching kernels: a [`LaunchConfig`], typed parameter lists, and the checks made before the
//! driver sees anything.
//!
//! A kernel's parameter list is written as a tuple of parameter types, one per C parameter:
//!
//! | C parameter | parameter type | arguments accepted at launch |
//! |---|---|---|
//! | `const T *p` | [`Ptr<T>`] | `&buf` of any [`DeviceMemory<T>`] (`DeviceBuffer`, `SharedDeviceBuffer`, views), or a `DeviceSlice<T>` / `DeviceSliceMut<T>` by value |
//! | `T *p` (written) | [`PtrMut<T>`] | `&mut buf` of any [`DeviceMemoryMut<T>`], or a `DeviceSliceMut<T>` by value |
//! | a scalar (`unsigned int n`, `float a`, a `struct`) | the Rust type of the same layout (`u32`, `f32`, a `#[repr(C)]` [`Pod`] struct) | a value of that type |
//!
//! Every device argument is checked to belong to the function's [`Context`] before the launch,
//! and a pointer of the wrong element type does not compile:
//!
//! ```compile_fail
//! # use cuda_ipc::prelude::*;
//! # fn f(stream: &Stream<'_>, k: &Function<'_, (PtrMut<f32>, u32)>, buf: &mut DeviceBuffer<'_, u32>) {
//! // error: a u32 buffer is not a `float *`
//! unsafe { k.launch(stream, LaunchConfig::for_num_elems(16), (buf, 16u32)) };
//! # }
//! ```
//!
//! ```compile_fail
//! # use cuda_ipc::prelude::*;
//! # fn f(stream: &Stream<'_>, k: &Function<'_, (PtrMut<f32>, u32)>, buf: &DeviceBuffer<'_, f32>) {
//! // error: a shared borrow cannot be written through
//! unsafe { k.launch(stream, LaunchConfig::for_num_elems(16), (buf, 16u32)) };
//! # }
//! ```
//!
//! See [`crate::module`] for loading kernels and a complete example.

use std::ffi::c_void;
use std::marker::PhantomData;

use bytemuck::Pod;

use crate::context::Context;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::{DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut};
use crate::result::{self, CUcontext, CUfunction};
use crate::stream::Stream;
use crate::uses::StreamUses;

/// The grid and block shape of a launch, and its dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory per block (`extern __shared__`).
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// Threads per block of [`for_num_elems`](Self::for_num_elems).
    pub const BLOCK: u32 = 256;
    /// The largest grid x dimension a GPU accepts (2³¹ − 1).
    pub const MAX_GRID_X: u32 = i32::MAX as u32;
    /// The most threads one block may have.
    pub const MAX_BLOCK_THREADS: u32 = 1024;

    /// One thread per element for `n` elements: blocks of [`BLOCK`](Self::BLOCK) threads and
    /// enough of them, at least one. For more than `MAX_GRID_X × 256` elements the grid is
    /// capped, so a kernel that must cover any `n` loops with a grid stride
    /// (`for (i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)`).
    pub fn for_num_elems(n: u64) -> Self {
        let blocks = n
            .div_ceil(Self::BLOCK as u64)
            .clamp(1, Self::MAX_GRID_X as u64);
        LaunchConfig {
            grid: (blocks as u32, 1, 1),
            block: (Self::BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The same shape with `bytes` of dynamic shared memory per block.
    pub fn with_shared_mem(self, bytes: u32) -> Self {
        LaunchConfig {
            shared_mem_bytes: bytes,
            ..self
        }
    }

    /// Threads launched in all (saturating at `u64::MAX`).
    pub fn total_threads(&self) -> u64 {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        [gx, gy, gz, bx, by, bz]
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
    }

    /// Checks the limits every CUDA GPU has (no zero dimension, at most 1024 threads and 64 in
    /// z per block, grid y and z at most 65535), so that a wrong shape is a clear error rather
    /// than `CUDA_ERROR_INVALID_VALUE`. Per-kernel limits (registers, shared memory) are the
    /// driver's to check.
    pub fn validate(&self) -> Result<()> {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        let bad = |why: String| {
            Err(Error::InvalidArgument(format!(
                "launch configuration {self:?}: {why}"
            )))
        };
        if [gx, gy, gz, bx, by, bz].contains(&0) {
            return bad("every grid and block dimension must be at least 1".into());
        }
        let threads = (bx as u64)
            .saturating_mul(by as u64)
            .saturating_mul(bz as u64);
        if threads > Self::MAX_BLOCK_THREADS as u64 {
            return bad(format!(
                "{threads} threads per block, more than the {} a GPU allows",
                Self::MAX_BLOCK_THREADS
            ));
        }
        if bz > 64 {
            return bad(format!("block z is {bz}, more than 64"));
        }
        if gx > Self::MAX_GRID_X {
            return bad(format!("grid x is {gx}, more than {}", Self::MAX_GRID_X));
        }
        if gy > 65535 || gz > 65535 {
            return bad("grid y and z may be at most 65535".into());
        }
        Ok(())
    }
}

/// The parameter type of a `const T *` kernel parameter: the kernel reads device memory of
/// `T`s. Accepts `&` any [`DeviceMemory<T>`] or a [`DeviceSlice`] / [`DeviceSliceMut`].
pub struct Ptr<T>(PhantomData<*const T>);

/// The parameter type of a `T *` kernel parameter that the kernel writes. Accepts `&mut` any
/// [`DeviceMemoryMut<T>`] or a [`DeviceSliceMut`].
pub struct PtrMut<T>(PhantomData<*mut T>);

/// A 16-byte aligned chunk of parameter storage.
#[repr(C, align(16))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Chunk([u8; 16]);

/// The packed values of one launch's parameters, each at its type's alignment (what
/// `cuLaunchKernel` reads through its `kernelParams` array). Built by [`Args::pack`].
/// Device arguments borrow their memory for `'a`, so that the launch can record which stream
/// used it (see [`crate::memory`]'s stream-ordered lifetimes).
#[derive(Default)]
pub struct Params<'a> {
    storage: Vec<Chunk>,
    /// (offset, size) of each parameter, in bytes.
    spans: Vec<(usize, usize)>,
    used: usize,
    /// (parameter index, context, device) of each device argument.
    memory: Vec<(usize, CUcontext, Device)>,
    /// The stream-use records of the device arguments' memory.
    uses: Vec<&'a StreamUses>,
}

impl std::fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|i| self.bytes(i)))
            .finish()
    }
}

impl<'a> Params<'a> {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a parameter value. Types of size 0 or aligned to more than 16 bytes are refused
    /// (no kernel parameter has them).
    pub fn push<T: Pod>(&mut self, value: T) -> Result<()> {
        let (size, align) = (std::mem::size_of::<T>(), std::mem::align_of::<T>());
        if size == 0 || align > std::mem::align_of::<Chunk>() {
            return Err(Error::InvalidArgument(format!(
                "kernel parameter {} of type {} has size {size} and alignment {align}: \
                 parameters must be 1 to 4096 bytes, aligned to at most 16",
                self.len(),
                std::any::type_name::<T>()
            )));
        }
        let offset = self.used.next_multiple_of(align);
        let end = offset.checked_add(size).filter(|&e| e <= 4096).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "kernel parameters take more than the 4096 bytes a launch can pass (at parameter {})",
                self.len()
            ))
        })?;
        let chunks = end.div_ceil(std::mem::size_of::<Chunk>());
        if self.storage.len() < chunks {
            self.storage.resize(chunks, Chunk([0; 16]));
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.storage);
        bytes[offset..end].copy_from_slice(bytemuck::bytes_of(&value));
        self.spans.push((offset, size));
        self.used = end;
        Ok(())
    }

    /// How many parameters.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes of parameter `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn bytes(&self, index: usize) -> &[u8] {
        let (offset, size) = self.spans[index];
        &bytemuck::cast_slice::<Chunk, u8>(&self.storage)[offset..offset + size]
    }

    /// Notes that the parameter pushed next is device memory accessible from `ctx`
    /// (checked by [`check_context`](Self::check_context)).
    pub fn note_memory(&mut self, ctx: &Context) {
        self.memory.push((self.len(), ctx.raw(), ctx.device()));
    }

    /// Notes `view` as the device argument pushed next: its context is checked before the
    /// launch, and the launch is recorded as a use of its memory.
    fn note_view<T: Pod>(&mut self, view: &DeviceSlice<'a, T>) {
        self.note_memory(view.context());
        if let Some(uses) = view.uses() {
            self.uses.push(uses);
        }
    }

    /// Records, after a launch on `stream`, that it used every device argument's memory.
    pub(crate) fn record_uses(&self, stream: &Stream<'_>) -> Result<()> {
        // Every argument is recorded, even after a failure (which marks its memory untracked).
        let mut outcome = Ok(());
        for uses in &self.uses {
            let this = uses.record(stream.context(), stream.id(), stream.raw());
            if outcome.is_ok() {
                outcome = this;
            }
        }
        outcome
    }

    /// How many parameters are device memory.
    pub fn memory_count(&self) -> usize {
        self.memory.len()
    }

    /// Checks that every device argument is memory of `ctx`.
    pub fn check_context(&self, ctx: &Context) -> Result<()> {
        match self.memory.iter().find(|(_, raw, _)| *raw != ctx.raw()) {
            None => Ok(()),
            Some((index, _, device)) => Err(Error::InvalidArgument(format!(
                "kernel argument {index} is memory of {}, but the kernel is loaded in {}: pass \
                 memory of the kernel's context (import or copy it there), or load the module \
                 in the memory's context",
                device.label(),
                ctx.device().label()
            ))),
        }
    }

    /// The address of every parameter's value, for `cuLaunchKernel`. Valid until `self` is
    /// changed or dropped.
    pub(crate) fn pointers(&mut self) -> Vec<*mut c_void> {
        let base: *mut u8 = self.storage.as_mut_ptr().cast();
        self.spans
            .iter()
            // SAFETY: every span lies within `storage` (checked when pushed).
            .map(|&(offset, _)| unsafe { base.add(offset) }.cast())
            .collect()
    }
}

/// An argument for a kernel parameter of type `P` (see the [module docs](self)), borrowing
/// device memory for `'a`.
pub trait Arg<'a, P> {
    /// Appends the value passed to the kernel; device memory also notes its context
    /// ([`Params::note_memory`]) for the check before the launch.
    fn push(self, params: &mut Params<'a>) -> Result<()>;
}

fn device_arg<'a, T: Pod>(view: DeviceSlice<'a, T>, params: &mut Params<'a>) -> Result<()> {
    params.note_view(&view);
    params.push(view.device_ptr())
}

impl<'a, S: Pod> Arg<'a, S> for S {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        params.push(self)
    }
}

impl<'a, T: Pod, M: DeviceMemory<T> + ?Sized> Arg<'a, Ptr<T>> for &'a M {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        device_arg(self.view(), params)
    }
}

impl<'a, T: Pod, M: DeviceMemoryMut<T> + ?Sized> Arg<'a, Ptr<T>> for &'a mut M {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        let shared: &'a M = self;
        device_arg(shared.view(), params)
    }
}

impl<'a, T: Pod, M: DeviceMemoryMut<T> + ?Sized> Arg<'a, PtrMut<T>> for &'a mut M {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        let shared: &'a M = self;
        device_arg(shared.view(), params)
    }
}

impl<'a, T: Pod> Arg<'a, Ptr<T>> for DeviceSlice<'a, T> {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        device_arg(self, params)
    }
}

impl<'a, T: Pod> Arg<'a, Ptr<T>> for DeviceSliceMut<'a, T> {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        device_arg(self.into_slice(), params)
    }
}

impl<'a, T: Pod> Arg<'a, PtrMut<T>> for DeviceSliceMut<'a, T> {
    fn push(self, params: &mut Params<'a>) -> Result<()> {
        device_arg(self.into_slice(), params)
    }
}

/// A tuple of arguments for the parameter list `P` (a tuple of parameter types, up to 12).
pub trait Args<'a, P> {
    /// Packs the values, noting the context of every device argument.
    fn pack(self) -> Result<Params<'a>>;
}

macro_rules! tuple_args {
    ($(($p:ident, $a:ident, $i:tt)),*) => {
        impl<'a, $($p, $a: Arg<'a, $p>),*> Args<'a, ($($p,)*)> for ($($a,)*) {
            #[allow(unused_variables, unused_mut)]
            fn pack(self) -> Result<Params<'a>> {
                let mut params = Params::new();
                $( self.$i.push(&mut params)?; )*
                Ok(params)
            }
        }
    };
}

tuple_args!();
tuple_args!((P0, A0, 0));
tuple_args!((P0, A0, 0), (P1, A1, 1));
tuple_args!((P0, A0, 0), (P1, A1, 1), (P2, A2, 2));
tuple_args!((P0, A0, 0), (P1, A1, 1), (P2, A2, 2), (P3, A3, 3));
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6),
    (P7, A7, 7)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6),
    (P7, A7, 7),
    (P8, A8, 8)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6),
    (P7, A7, 7),
    (P8, A8, 8),
    (P9, A9, 9)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6),
    (P7, A7, 7),
    (P8, A8, 8),
    (P9, A9, 9),
    (P10, A10, 10)
);
tuple_args!(
    (P0, A0, 0),
    (P1, A1, 1),
    (P2, A2, 2),
    (P3, A3, 3),
    (P4, A4, 4),
    (P5, A5, 5),
    (P6, A6, 6),
    (P7, A7, 7),
    (P8, A8, 8),
    (P9, A9, 9),
    (P10, A10, 10),
    (P11, A11, 11)
);

/// Checks that `stream` belongs to `ctx`.
pub(crate) fn check_launch_stream(ctx: &Context, stream: &Stream<'_>, what: &str) -> Result<()> {
    if stream.context().raw() == ctx.raw() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} is loaded in {} but the stream belongs to {}: launch it on a stream of \
             the module's context",
            ctx.device().label(),
            stream.context().device().label()
        )))
    }
}

/// The one place this crate launches a kernel: checks the stream's context and the
/// configuration, binds `ctx` and calls `cuLaunchKernel`.
///
/// # Safety
/// `f` must be a function of a module loaded in `ctx` that is still loaded, and `params`
/// must satisfy [`result::launch_kernel_3d`].
pub(crate) unsafe fn launch_raw(
    ctx: &Context,
    f: CUfunction,
    what: &str,
    config: &LaunchConfig,
    stream: &Stream<'_>,
    params: &mut [*mut c_void],
) -> Result<()> {
    check_launch_stream(ctx, stream, what)?;
    config.validate()?;
    let _bound = ctx.bind()?;
    let (gx, gy, gz) = config.grid;
    let (bx, by, bz) = config.block;
    // SAFETY: forwarded to the caller; the stream is live while borrowed and of `ctx`, which
    // is current.
    unsafe {
        result::launch_kernel_3d(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            config.shared_mem_bytes,
            stream.raw(),
            params,
        )
    }?;
    Ok(())
}
