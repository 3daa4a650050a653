//! The raw driver calls the benches measure as baselines (what a program without cuda-ipc
//! would call), resolved with `dlopen("libcuda.so.1")` + `dlsym`: the same library, and so the
//! same contexts, as the crate uses. Each returns the `CUresult` as an error message.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

/// `CUdeviceptr`.
pub type DevicePtr = u64;
/// `CUmemGenericAllocationHandle`.
pub type AllocHandle = u64;

/// `CUipcMemHandle`: 64 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct IpcMemHandle {
    reserved: [u8; 64],
}

/// `CUmemLocation` of a device.
#[repr(C)]
#[derive(Clone, Copy)]
struct Location {
    type_: u32,
    id: i32,
}

/// `CUmemAllocationProp` (32 bytes, cuda.h of CUDA 10.2 and later).
#[repr(C)]
struct AllocationProp {
    type_: u32,
    requested_handle_types: u32,
    location: Location,
    win32_handle_meta_data: *mut c_void,
    alloc_flags: u64,
}

/// `CUmemAccessDesc` (12 bytes).
#[repr(C)]
struct AccessDesc {
    location: Location,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<AllocationProp>() == 32);
const _: () = assert!(std::mem::size_of::<AccessDesc>() == 12);
const _: () = assert!(std::mem::size_of::<IpcMemHandle>() == 64);

const MEM_ALLOCATION_TYPE_PINNED: u32 = 1;
const MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: u32 = 1;
const MEM_LOCATION_TYPE_DEVICE: u32 = 1;
const MEM_ACCESS_FLAGS_PROT_READWRITE: u32 = 3;
const IPC_MEM_LAZY_ENABLE_PEER_ACCESS: u32 = 1;

type R = u32;

/// The entry points, by the driver's symbol names.
macro_rules! api {
    ($($field:ident = $symbol:literal: fn($($ty:ty),*);)*) => {
        struct Api { $($field: unsafe extern "C" fn($($ty),*) -> R,)* }

        fn api() -> &'static Api {
            static API: OnceLock<Api> = OnceLock::new();
            API.get_or_init(|| {
                // SAFETY: a NUL-terminated name; the handle is never closed (the functions are
                // called until the process exits).
                let lib = unsafe {
                    libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL)
                };
                assert!(!lib.is_null(), "dlopen(libcuda.so.1) failed");
                let symbol = |name: &CStr| {
                    // SAFETY: a live library handle and a NUL-terminated name.
                    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
                    assert!(!p.is_null(), "libcuda.so.1 has no {name:?}");
                    p
                };
                Api {
                    $(
                        // SAFETY: the symbol is the driver's C function of this name, whose
                        // signature cuda.h declares as written here.
                        $field: unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> R>(
                                symbol($symbol),
                            )
                        },
                    )*
                }
            })
        }
    };
}

api! {
    mem_alloc = c"cuMemAlloc_v2": fn(*mut DevicePtr, usize);
    mem_free = c"cuMemFree_v2": fn(DevicePtr);
    ipc_get_mem_handle = c"cuIpcGetMemHandle": fn(*mut IpcMemHandle, DevicePtr);
    ipc_open_mem_handle = c"cuIpcOpenMemHandle_v2": fn(*mut DevicePtr, IpcMemHandle, u32);
    ipc_close_mem_handle = c"cuIpcCloseMemHandle": fn(DevicePtr);
    mem_create = c"cuMemCreate": fn(*mut AllocHandle, usize, *const AllocationProp, u64);
    mem_release = c"cuMemRelease": fn(AllocHandle);
    mem_export = c"cuMemExportToShareableHandle": fn(*mut c_void, AllocHandle, u32, u64);
    mem_import = c"cuMemImportFromShareableHandle": fn(*mut AllocHandle, *mut c_void, u32);
    mem_address_reserve = c"cuMemAddressReserve": fn(*mut DevicePtr, usize, usize, DevicePtr, u64);
    mem_address_free = c"cuMemAddressFree": fn(DevicePtr, usize);
    mem_map = c"cuMemMap": fn(DevicePtr, usize, usize, AllocHandle, u64);
    mem_unmap = c"cuMemUnmap": fn(DevicePtr, usize);
    mem_set_access = c"cuMemSetAccess": fn(DevicePtr, usize, *const AccessDesc, usize);
    memcpy_peer_async = c"cuMemcpyPeerAsync":
        fn(DevicePtr, *mut c_void, DevicePtr, *mut c_void, usize, *mut c_void);
}

fn check(call: &str, rc: R) -> Result<(), String> {
    match rc {
        0 => Ok(()),
        _ => Err(format!("{call} failed with CUresult {rc}")),
    }
}

/// `cuMemAlloc_v2` in the current context.
pub fn mem_alloc(bytes: usize) -> Result<DevicePtr, String> {
    let mut p = 0;
    // SAFETY: a valid out-pointer.
    check("cuMemAlloc", unsafe { (api().mem_alloc)(&mut p, bytes) })?;
    Ok(p)
}

/// `cuMemFree_v2`.
///
/// # Safety
/// `ptr` must come from [`mem_alloc`], be freed once, and not be in use.
pub unsafe fn mem_free(ptr: DevicePtr) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemFree", unsafe { (api().mem_free)(ptr) })
}

/// `cuIpcGetMemHandle`: the handle bytes of an allocation of [`mem_alloc`].
pub fn ipc_get_mem_handle(ptr: DevicePtr) -> Result<[u8; 64], String> {
    let mut h = IpcMemHandle { reserved: [0; 64] };
    // SAFETY: a valid out-pointer; the driver checks `ptr`.
    check("cuIpcGetMemHandle", unsafe {
        (api().ipc_get_mem_handle)(&mut h, ptr)
    })?;
    Ok(h.reserved)
}

/// `cuIpcOpenMemHandle_v2` with lazy peer access, in the current context.
///
/// # Safety
/// The handle must name a live allocation; close the mapping with [`ipc_close_mem_handle`].
pub unsafe fn ipc_open_mem_handle(handle: &[u8; 64]) -> Result<DevicePtr, String> {
    let mut p = 0;
    let h = IpcMemHandle { reserved: *handle };
    // SAFETY: a valid out-pointer; the handle is passed by value.
    check("cuIpcOpenMemHandle", unsafe {
        (api().ipc_open_mem_handle)(&mut p, h, IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
    })?;
    Ok(p)
}

/// `cuIpcCloseMemHandle`.
///
/// # Safety
/// `ptr` must come from [`ipc_open_mem_handle`] and not be used afterwards.
pub unsafe fn ipc_close_mem_handle(ptr: DevicePtr) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuIpcCloseMemHandle", unsafe {
        (api().ipc_close_mem_handle)(ptr)
    })
}

fn device(ordinal: i32) -> Location {
    Location {
        type_: MEM_LOCATION_TYPE_DEVICE,
        id: ordinal,
    }
}

/// `cuMemCreate` of `bytes` (a multiple of the granularity) of pinned memory on device
/// `ordinal`, exportable as a POSIX fd.
pub fn mem_create_posix_fd(ordinal: i32, bytes: usize) -> Result<AllocHandle, String> {
    let prop = AllocationProp {
        type_: MEM_ALLOCATION_TYPE_PINNED,
        requested_handle_types: MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: device(ordinal),
        win32_handle_meta_data: std::ptr::null_mut(),
        alloc_flags: 0,
    };
    let mut h = 0;
    // SAFETY: a valid out-pointer and property struct.
    check("cuMemCreate", unsafe {
        (api().mem_create)(&mut h, bytes, &prop, 0)
    })?;
    Ok(h)
}

/// `cuMemRelease`.
///
/// # Safety
/// `handle` must be live and released once.
pub unsafe fn mem_release(handle: AllocHandle) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemRelease", unsafe { (api().mem_release)(handle) })
}

/// `cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)`: a new fd the caller owns.
///
/// # Safety
/// `handle` must be live and created with the POSIX fd handle type.
pub unsafe fn mem_export_posix_fd(handle: AllocHandle) -> Result<i32, String> {
    let mut fd: i32 = -1;
    // SAFETY: for POSIX fds the shareable handle is an int; a valid out-pointer.
    check("cuMemExportToShareableHandle", unsafe {
        (api().mem_export)(
            (&mut fd as *mut i32).cast(),
            handle,
            MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    Ok(fd)
}

/// `cuMemImportFromShareableHandle(POSIX_FILE_DESCRIPTOR)`; the fd stays the caller's.
pub fn mem_import_posix_fd(fd: i32) -> Result<AllocHandle, String> {
    let mut h = 0;
    // SAFETY: for POSIX fds the OS handle is the fd's value cast to a pointer (cuda.h); the
    // driver checks that it is a CUDA allocation's fd.
    check("cuMemImportFromShareableHandle", unsafe {
        (api().mem_import)(
            &mut h,
            fd as isize as *mut c_void,
            MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        )
    })?;
    Ok(h)
}

/// `cuMemAddressReserve` of `bytes` of address space.
pub fn mem_address_reserve(bytes: usize, alignment: usize) -> Result<DevicePtr, String> {
    let mut p = 0;
    // SAFETY: a valid out-pointer; no fixed address.
    check("cuMemAddressReserve", unsafe {
        (api().mem_address_reserve)(&mut p, bytes, alignment, 0, 0)
    })?;
    Ok(p)
}

/// `cuMemAddressFree`.
///
/// # Safety
/// A whole reservation with nothing mapped in it.
pub unsafe fn mem_address_free(ptr: DevicePtr, bytes: usize) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemAddressFree", unsafe {
        (api().mem_address_free)(ptr, bytes)
    })
}

/// `cuMemMap` of a whole allocation at `ptr`.
///
/// # Safety
/// `ptr..ptr+bytes` reserved and unmapped; `handle` live and of `bytes` bytes.
pub unsafe fn mem_map(ptr: DevicePtr, bytes: usize, handle: AllocHandle) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemMap", unsafe {
        (api().mem_map)(ptr, bytes, 0, handle, 0)
    })
}

/// `cuMemUnmap`.
///
/// # Safety
/// The range must be mapped and unused.
pub unsafe fn mem_unmap(ptr: DevicePtr, bytes: usize) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemUnmap", unsafe { (api().mem_unmap)(ptr, bytes) })
}

/// `cuMemSetAccess`: read-write access for device `ordinal`.
///
/// # Safety
/// The range must be mapped.
pub unsafe fn mem_set_access_rw(ptr: DevicePtr, bytes: usize, ordinal: i32) -> Result<(), String> {
    let desc = AccessDesc {
        location: device(ordinal),
        flags: MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: one valid descriptor; the range is forwarded to the caller.
    check("cuMemSetAccess", unsafe {
        (api().mem_set_access)(ptr, bytes, &desc, 1)
    })
}

/// `cuMemcpyPeerAsync`.
///
/// # Safety
/// Both ranges must be valid memory of their contexts for `bytes` bytes until the stream
/// reaches the copy; the contexts and the stream must be live.
pub unsafe fn memcpy_peer_async(
    dst: DevicePtr,
    dst_ctx: *mut c_void,
    src: DevicePtr,
    src_ctx: *mut c_void,
    bytes: usize,
    stream: *mut c_void,
) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    check("cuMemcpyPeerAsync", unsafe {
        (api().memcpy_peer_async)(dst, dst_ctx, src, src_ctx, bytes, stream)
    })
}
