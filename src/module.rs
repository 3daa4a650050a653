//! Your own kernels: load PTX, a cubin or a fatbin into a [`Context`], get typed functions,
//! and launch them on the crate's buffers — shared ones included.
//!
//! A [`Module`] is code loaded into one context (`cuModuleLoadData`), unloaded when it drops;
//! it borrows the context, so it cannot outlive it. [`Module::function`] finds a kernel by its
//! entry name and gives it a parameter list ([`crate::launch`] explains the parameter types);
//! [`Function::launch`] checks every argument (each device argument must be memory of the
//! module's context, the stream must be of that context) and queues the kernel on a stream.
//!
//! ```no_run
//! use cuda_ipc::prelude::*;
//!
//! // nvcc -ptx saxpy.cu, or the `cuda_ipc::build` helper in your build.rs
//! const PTX: &str = r#"
//! .version 7.0
//! .target sm_52
//! .address_size 64
//! .visible .entry saxpy(.param .u64 y, .param .u64 x, .param .f32 a, .param .u32 n)
//! {
//!     .reg .pred %p; .reg .b32 %r<5>; .reg .f32 %f<4>; .reg .b64 %rd<8>;
//!     ld.param.u64 %rd1, [y]; ld.param.u64 %rd2, [x]; ld.param.f32 %f1, [a]; ld.param.u32 %r1, [n];
//!     mov.u32 %r2, %ctaid.x; mov.u32 %r3, %ntid.x; mov.u32 %r4, %tid.x;
//!     mad.lo.s32 %r2, %r2, %r3, %r4;
//!     setp.ge.u32 %p, %r2, %r1;
//!     @%p bra DONE;
//!     cvta.to.global.u64 %rd3, %rd1; cvta.to.global.u64 %rd4, %rd2;
//!     mul.wide.u32 %rd5, %r2, 4; add.s64 %rd6, %rd3, %rd5; add.s64 %rd7, %rd4, %rd5;
//!     ld.global.f32 %f2, [%rd7]; ld.global.f32 %f3, [%rd6];
//!     fma.rn.f32 %f3, %f1, %f2, %f3; st.global.f32 [%rd6], %f3;
//! DONE:
//!     ret;
//! }
//! "#;
//!
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let module = Module::from_ptx(&ctx, PTX)?;
//! // extern "C" __global__ void saxpy(float *y, const float *x, float a, unsigned n)
//! let saxpy = module.function::<(PtrMut<f32>, Ptr<f32>, f32, u32)>("saxpy")?;
//!
//! let x = DeviceBuffer::from_slice(&ctx, &[1.0f32; 1000])?;
//! let mut y = DeviceBuffer::from_slice(&ctx, &[2.0f32; 1000])?;
//! let n = y.len() as u32;
//! // SAFETY: the parameter list is saxpy's, and saxpy touches only y[0..n] and x[0..n].
//! unsafe { saxpy.launch(&stream, LaunchConfig::for_num_elems(n.into()), (&mut y, &x, 3.0, n)) }?;
//! stream.synchronize()?;
//! assert_eq!(y.copy_to_vec()?[0], 5.0);
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! A [`SharedDeviceBuffer`](crate::ipc::SharedDeviceBuffer), exported here or imported from
//! another process, is passed the same way (`&buf` or `&mut buf`): the kernel works on the
//! shared memory in place.
//!
//! Loading failures are [`Error::Module`] with the cause and the fix: a PTX newer than the
//! driver (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), a cubin for another GPU
//! (`CUDA_ERROR_INVALID_IMAGE`, `CUDA_ERROR_NO_BINARY_FOR_GPU`), a kernel name that is not an
//! entry point (`CUDA_ERROR_NOT_FOUND`, with the names the PTX does declare).

use std::ffi::CString;
use std::marker::PhantomData;
use std::path::Path;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::launch::{self, Args, LaunchConfig};
use crate::result::{self, codes, CUfunction, CUmodule, DriverError};
use crate::stream::Stream;

/// What kind of code an image holds, as [`image_kind`] tells from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// PTX text (compiled by the driver's JIT on load).
    Ptx,
    /// A cubin: an ELF file of machine code for one GPU architecture (`nvcc -cubin`).
    Cubin,
    /// A fatbin: cubins and/or PTX for several architectures (`nvcc -fatbin`).
    Fatbin,
}

impl ImageKind {
    fn name(self) -> &'static str {
        match self {
            ImageKind::Ptx => "PTX",
            ImageKind::Cubin => "cubin",
            ImageKind::Fatbin => "fatbin",
        }
    }
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const FATBIN_MAGIC: u32 = 0xBA55_ED50;

fn bad_image(what: String) -> Error {
    Error::InvalidArgument(format!("not a loadable module image: {what}"))
}

fn read_u16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}
fn read_u32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `offset + count * size <= len`, without overflow.
fn fits(offset: u64, count: u64, size: u64, len: usize) -> bool {
    count
        .checked_mul(size)
        .and_then(|bytes| bytes.checked_add(offset))
        .is_some_and(|end| end <= len as u64)
}

/// Tells PTX, cubin and fatbin apart, and checks that every table the driver will follow in a
/// cubin or fatbin lies within `image` (`cuModuleLoadData` takes no length, so a truncated
/// binary would make it read past the end). PTX must be text with a `.version` directive and no
/// NUL byte except at the end.
pub fn image_kind(image: &[u8]) -> Result<ImageKind> {
    if image.is_empty() {
        return Err(bad_image("the image is empty".into()));
    }
    if image.starts_with(ELF_MAGIC) {
        check_elf(image)?;
        return Ok(ImageKind::Cubin);
    }
    if image.len() >= 4 && read_u32(image, 0) == FATBIN_MAGIC as u64 {
        if image.len() < 16 {
            return Err(bad_image(format!(
                "a fatbin header is 16 bytes, the image has {}",
                image.len()
            )));
        }
        let header = read_u16(image, 6);
        let body = read_u64(image, 8);
        if !fits(header, 1, body, image.len()) {
            return Err(bad_image(format!(
                "the fatbin header says {header} + {body} bytes, the image has {} (truncated?)",
                image.len()
            )));
        }
        return Ok(ImageKind::Fatbin);
    }
    let text = image.strip_suffix(&[0]).unwrap_or(image);
    if let Some(at) = text.iter().position(|&b| b == 0) {
        return Err(bad_image(format!(
            "neither a cubin (ELF) nor a fatbin, and as PTX text it has a NUL byte at offset {at}"
        )));
    }
    match std::str::from_utf8(text) {
        Ok(ptx) if ptx_version(ptx).is_some() => Ok(ImageKind::Ptx),
        _ => Err(bad_image(
            "neither a cubin (ELF), a fatbin, nor PTX text (which starts with a `.version` \
             directive)"
                .into(),
        )),
    }
}

fn check_elf(image: &[u8]) -> Result<()> {
    if image.len() < 64 || image[4] != 2 || image[5] != 1 {
        return Err(bad_image(
            "an ELF file, but not a complete 64-bit little-endian ELF header (a cubin is one)"
                .into(),
        ));
    }
    let len = image.len();
    let (phoff, phentsize, phnum) = (
        read_u64(image, 0x20),
        read_u16(image, 0x36),
        read_u16(image, 0x38),
    );
    let (shoff, shentsize, shnum) = (
        read_u64(image, 0x28),
        read_u16(image, 0x3A),
        read_u16(image, 0x3C),
    );
    if phnum > 0 && (phentsize < 56 || !fits(phoff, phnum, phentsize, len)) {
        return Err(bad_image(format!(
            "the cubin's program headers ({phnum} × {phentsize} bytes at {phoff}) run past its \
             {len} bytes (truncated?)"
        )));
    }
    if shnum > 0 && (shentsize < 64 || !fits(shoff, shnum, shentsize, len)) {
        return Err(bad_image(format!(
            "the cubin's section headers ({shnum} × {shentsize} bytes at {shoff}) run past its \
             {len} bytes (truncated?)"
        )));
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let (offset, size) = (read_u64(image, at + 8), read_u64(image, at + 32));
        if !fits(offset, 1, size, len) {
            return Err(bad_image(format!(
                "the cubin's segment {i} ({size} bytes at {offset}) runs past its {len} bytes \
                 (truncated?)"
            )));
        }
    }
    const SHT_NOBITS: u64 = 8;
    for i in 0..shnum {
        let at = (shoff + i * shentsize) as usize;
        let kind = read_u32(image, at + 4);
        let (offset, size) = (read_u64(image, at + 24), read_u64(image, at + 32));
        if kind != SHT_NOBITS && !fits(offset, 1, size, len) {
            return Err(bad_image(format!(
                "the cubin's section {i} ({size} bytes at {offset}) runs past its {len} bytes \
                 (truncated?)"
            )));
        }
    }
    Ok(())
}

/// The `.version` of a PTX text, e.g. `(8, 5)`.
pub fn ptx_version(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(".version"))?;
    let (major, minor) = line[".version".len()..].trim().split_once('.')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

/// The `.target` of a PTX text, e.g. `sm_75`.
pub fn ptx_target(ptx: &str) -> Option<&str> {
    let line = ptx
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(".target"))?;
    line[".target".len()..]
        .split([',', ' ', '\t'])
        .map(str::trim)
        .find(|t| !t.is_empty())
}

/// The kernels a PTX text declares (`.entry` names, visible or not), in order.
pub fn ptx_entry_points(ptx: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in ptx.lines() {
        let mut words = line.split_whitespace().peekable();
        while let Some(word) = words.next() {
            if word == ".entry" {
                if let Some(next) = words.peek() {
                    let name: String = next
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
                        .collect();
                    if !name.is_empty() {
                        names.push(name);
                    }
                }
            }
        }
    }
    names
}

/// The newest PTX ISA version a driver of CUDA `major.minor` can load (from the PTX ISA
/// release notes), or `None` for a version this table does not know.
pub fn max_ptx_isa_for_cuda(major: i32, minor: i32) -> Option<(u32, u32)> {
    Some(match (major, minor) {
        (11, m @ 0..=8) => (7, m as u32),
        (12, m @ 0..=5) => (8, m as u32),
        (12, 6) => (8, 5),
        (12, 8) => (8, 7),
        (12, 9) => (8, 8),
        (13, 0) => (9, 0),
        _ => return None,
    })
}

/// What a failed `cuModuleLoadData` most likely means, as an [`Error::Module`].
pub fn explain_load_error(
    e: DriverError,
    kind: ImageKind,
    ptx: Option<&str>,
    driver_cuda: Option<(i32, i32)>,
    compute_capability: Option<(i32, i32)>,
) -> Error {
    let gpu = compute_capability
        .map(|(ma, mi)| format!("this GPU (compute capability {ma}.{mi}, sm_{ma}{mi})"))
        .unwrap_or_else(|| "this GPU".to_string());
    let driver = driver_cuda
        .map(|(ma, mi)| format!("this driver (CUDA {ma}.{mi})"))
        .unwrap_or_else(|| "this driver".to_string());
    let hint = match e.code() {
        codes::UNSUPPORTED_PTX_VERSION => {
            let declared = ptx
                .and_then(ptx_version)
                .map(|(ma, mi)| format!("declares `.version {ma}.{mi}`, which is"))
                .unwrap_or_else(|| "is".to_string());
            let supported = driver_cuda
                .and_then(|(ma, mi)| max_ptx_isa_for_cuda(ma, mi))
                .map(|(ma, mi)| format!(" (it loads PTX up to ISA {ma}.{mi})"))
                .unwrap_or_default();
            format!(
                "the PTX {declared} newer than {driver} can compile{supported}: compile the \
                 kernel with an nvcc no newer than the driver's CUDA version (e.g. the PyPI \
                 nvidia-cuda-nvcc-cu12 wheel for a CUDA 12 driver), or update the NVIDIA driver"
            )
        }
        codes::INVALID_PTX => {
            let target = ptx
                .and_then(ptx_target)
                .map(|t| format!(" (it targets {t})"))
                .unwrap_or_default();
            format!(
                "the driver's PTX compiler rejected the PTX{target}: either it is not valid PTX, \
                 or it targets a newer architecture than {gpu}: compile with \
                 -arch=compute_XX no higher than the GPU's"
            )
        }
        codes::INVALID_IMAGE | codes::NO_BINARY_FOR_GPU => format!(
            "the {} holds no code {gpu} can run (a cubin is built for one architecture, \
             `nvcc -cubin -arch=sm_XX`): build it for this GPU, or ship PTX or a fatbin with \
             PTX (`-gencode arch=compute_XX,code=compute_XX`) that the driver can compile",
            kind.name()
        ),
        codes::JIT_COMPILER_NOT_FOUND | codes::JIT_COMPILATION_DISABLED => format!(
            "{driver} cannot compile PTX here (no JIT compiler, or JIT disabled): ship a cubin \
             built for {gpu}"
        ),
        _ => return Error::Driver(e),
    };
    Error::Module { source: e, hint }
}

/// The driver's CUDA version as (major, minor), if it can tell.
fn driver_cuda_version() -> Option<(i32, i32)> {
    crate::device::driver_version().ok()
}

/// Loads `image` (of `kind`, already checked by [`image_kind`]) in `ctx`, explaining a failure.
pub(crate) fn load_checked(ctx: &Context, image: &[u8], kind: ImageKind) -> Result<CUmodule> {
    // The driver reads the image without a length: give it an 8-byte aligned copy that is
    // NUL-terminated (needed for PTX, harmless for binaries whose headers give their sizes).
    let mut aligned = vec![0u64; (image.len() + 1).div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
    let bytes: &[u8] = bytemuck::cast_slice(&aligned);
    let _bound = ctx.bind()?;
    // SAFETY: `image_kind` checked that a cubin's or fatbin's tables lie within the image and
    // that PTX has no interior NUL; the copy is NUL-terminated and 8-byte aligned.
    unsafe { result::module_load_image(bytes) }.map_err(|e| {
        let ptx = (kind == ImageKind::Ptx)
            .then(|| std::str::from_utf8(image).ok())
            .flatten();
        explain_load_error(
            e,
            kind,
            ptx,
            driver_cuda_version(),
            ctx.device().compute_capability().ok(),
        )
    })
}

/// Finds kernel `name` in a loaded module; `entries` are the names the PTX declares, if known.
///
/// # Safety
/// `module` must be loaded (in `ctx`).
pub(crate) unsafe fn function_checked(
    ctx: &Context,
    module: CUmodule,
    name: &str,
    entries: Option<&[String]>,
) -> Result<CUfunction> {
    let cname = CString::new(name)
        .map_err(|_| Error::InvalidArgument(format!("kernel name {name:?} contains a NUL byte")))?;
    let _bound = ctx.bind()?;
    // SAFETY: `module` is loaded, forwarded to the caller.
    unsafe { result::module_get_function(module, &cname) }.map_err(|e| {
        if !e.is(codes::NOT_FOUND) {
            return Error::Driver(e);
        }
        let known = match entries {
            Some(list) if !list.is_empty() => format!("its entry points are {list:?}"),
            Some(_) => "its PTX declares no `.entry` at all".to_string(),
            None => "list its entry points with `cuobjdump -symbols`".to_string(),
        };
        Error::Module {
            source: e,
            hint: format!(
                "the module has no kernel named {name:?}; {known}. A kernel defined in C++ is \
                 exported under a mangled name (_Z…) unless it is declared \
                 `extern \"C\" __global__`"
            ),
        }
    })
}

/// Code loaded into one context (`cuModuleLoadData`); unloaded on drop.
pub struct Module<'ctx> {
    ctx: &'ctx Context,
    raw: CUmodule,
    kind: ImageKind,
    entries: Option<Vec<String>>,
}

// SAFETY: a CUmodule is an opaque handle usable from any thread once its context is current,
// which every use arranges with `bind`; the module is immutable after loading.
unsafe impl Send for Module<'_> {}
// SAFETY: see Send; cuModuleGetFunction and launches are thread-safe in the driver.
unsafe impl Sync for Module<'_> {}

impl std::fmt::Debug for Module<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Module({:?}, {}, {:p})",
            self.ctx.device(),
            self.kind.name(),
            self.raw
        )
    }
}

impl<'ctx> Module<'ctx> {
    /// Loads PTX text (what `nvcc -ptx` writes).
    pub fn from_ptx(ctx: &'ctx Context, ptx: &str) -> Result<Self> {
        Self::from_image(ctx, ptx.as_bytes())
    }

    /// Loads a PTX, cubin or fatbin image, telling which by its first bytes ([`image_kind`]).
    pub fn from_image(ctx: &'ctx Context, image: &[u8]) -> Result<Self> {
        let kind = image_kind(image)?;
        let entries = (kind == ImageKind::Ptx)
            .then(|| std::str::from_utf8(image).ok().map(ptx_entry_points))
            .flatten();
        let raw = load_checked(ctx, image, kind)?;
        Ok(Module {
            ctx,
            raw,
            kind,
            entries,
        })
    }

    /// Loads a `.ptx`, `.cubin` or `.fatbin` file.
    pub fn from_file(ctx: &'ctx Context, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let image = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading the module {}", path.display()), e))?;
        Self::from_image(ctx, &image)
    }

    /// The context the module is loaded in.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// What the image was.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The kernels the PTX declares; `None` for a cubin or fatbin.
    pub fn entry_points(&self) -> Option<&[String]> {
        self.entries.as_deref()
    }

    /// The kernel `name`, with the parameter list `P`: a tuple with one parameter type per C
    /// parameter ([`Ptr<T>`](crate::launch::Ptr) for `const T *`,
    /// [`PtrMut<T>`](crate::launch::PtrMut) for `T *`, the Rust type of a scalar). The driver
    /// cannot check `P` against the kernel: launching is `unsafe` for that reason.
    pub fn function<P>(&self, name: &str) -> Result<Function<'_, P>> {
        // SAFETY: `self.raw` is loaded until `self` drops, which the borrow outlives.
        let raw = unsafe { function_checked(self.ctx, self.raw, name, self.entries.as_deref()) }?;
        Ok(Function {
            ctx: self.ctx,
            raw,
            name: name.to_string(),
            _module: PhantomData,
            _params: PhantomData,
        })
    }
}

impl Drop for Module<'_> {
    fn drop(&mut self) {
        // A kernel still queued keeps its code alive: the driver defers the unload.
        let _bound = match self.ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                crate::drop_log::record("Module (binding its context to unload; leaked)", e);
                return;
            }
        };
        // SAFETY: we loaded the module; every `Function` borrows `self`, so none is left.
        crate::drop_log::check("Module (cuModuleUnload)", unsafe {
            result::module_unload(self.raw)
        });
    }
}

/// A kernel of a [`Module`] with the parameter list `P` (see [`crate::launch`]).
pub struct Function<'m, P> {
    ctx: &'m Context,
    raw: CUfunction,
    name: String,
    _module: PhantomData<&'m Module<'m>>,
    _params: PhantomData<fn(P)>,
}

// SAFETY: a CUfunction is an immutable handle of a loaded module; launches bind the context.
unsafe impl<P> Send for Function<'_, P> {}
// SAFETY: see Send.
unsafe impl<P> Sync for Function<'_, P> {}

impl<P> std::fmt::Debug for Function<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Function({:?}, {}{})",
            self.ctx.device(),
            self.name,
            std::any::type_name::<P>()
        )
    }
}

impl<P> Function<'_, P> {
    /// The kernel's entry name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw `CUfunction`, valid while the module is loaded.
    pub fn raw(&self) -> CUfunction {
        self.raw
    }

    /// Queues the kernel on `stream` with `config` and `args` (a tuple, one argument per
    /// parameter). Before anything reaches the driver, the stream must be of the module's
    /// context, every device argument must be memory of that context, and `config` must be
    /// within every GPU's limits ([`LaunchConfig::validate`]); otherwise nothing is launched
    /// and the error says which. Returns when the kernel is queued: synchronize the stream
    /// (or record an event) before reading the results on the host.
    ///
    /// # Safety
    /// The kernel can do anything with the pointers it is given; the caller guarantees that:
    /// - `P` is the kernel's parameter list: as many parameters, in order, each of the exact
    ///   size and layout the kernel declares (`u32` for `unsigned int`, `u64` for `size_t`,
    ///   `Ptr<T>` / `PtrMut<T>` for a pointer to the `T` the kernel uses);
    /// - with this `config`, the kernel reads and writes only within the memory passed to it
    ///   (typically it compares its index with a length argument no larger than the buffers),
    ///   and writes only through `PtrMut` parameters (the memory behind a `Ptr` argument may be
    ///   shared with other readers);
    /// - the kernel does not race with other work on the same memory: buffers passed as
    ///   `PtrMut` are not read or written by other streams until this launch is done, unless
    ///   the kernel is written for that (atomics);
    /// - memory passed through views made with `from_raw_parts` stays allocated until the
    ///   stream has run the kernel (the crate's own buffers ensure this themselves: the launch
    ///   is recorded as a use of each device argument, and dropping one waits for its uses);
    /// - the kernel terminates (a kernel that never ends hangs every later synchronize).
    pub unsafe fn launch<'a, A: Args<'a, P>>(
        &self,
        stream: &Stream<'_>,
        config: LaunchConfig,
        args: A,
    ) -> Result<()> {
        let what = format!("kernel {:?}", self.name);
        launch::check_launch_stream(self.ctx, stream, &what)?;
        let mut params = args.pack()?;
        params.check_context(self.ctx)?;
        let mut pointers = params.pointers();
        // SAFETY: the function belongs to a module of `self.ctx` that outlives `self`; the
        // parameter values are packed in `params`, which outlives the call; that they match the
        // kernel, and the memory contract, are forwarded to the caller.
        unsafe { launch::launch_raw(self.ctx, self.raw, &what, &config, stream, &mut pointers) }?;
        // The memory's drop (and synchronous copies) now wait for this launch.
        params.record_uses(stream)
    }
}
