//! Opening a shared library at run time: `dlopen` and `dlsym`, and nothing else.
//!
//! cuda-ipc does not link against `libcuda`: a program that depends on it builds and links on a
//! machine without CUDA, and starts without the NVIDIA driver (it then gets
//! [`Error::DriverNotFound`](crate::Error::DriverNotFound) from the first call that needs the
//! driver, instead of a dynamic-loader failure before `main`). [`crate::sys`] opens the driver
//! library through this module the first time a driver function is called, and looks up every
//! entry point once.
//!
//! ```
//! # // This module is private; its behaviour shows through the public error type.
//! match cuda_ipc::Device::count() {
//!     Err(cuda_ipc::Error::DriverNotFound { searched, .. }) => assert!(searched.contains("libcuda.so.1")),
//!     _ => {} // the driver library was found (with or without a GPU)
//! }
//! ```
//!
//! This is the one module besides [`crate::os`] that calls `libc`: the dynamic loader is what
//! makes the driver optional, and keeping it apart from the OS plumbing of `os` keeps each file
//! about one thing.
//!
//! # Ownership
//! A [`Library`] is opened once per process and **never closed** (`dlclose` is never called):
//! the function pointers taken from it live in a process-wide table and may be called until the
//! process exits, including from `Drop` implementations that run during or after `main`'s
//! return, and `libcuda` itself does not support being unloaded while it has contexts, threads or
//! exit handlers registered. Other libraries in the process (cudarc, PyTorch via FFI, …) that
//! open `libcuda.so.1` get the same loaded copy (the loader counts references), so they share
//! the driver's primary contexts with this crate.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

/// A shared library opened with `dlopen(RTLD_NOW | RTLD_LOCAL)`, kept open for the process's
/// lifetime.
#[derive(Debug)]
pub(crate) struct Library {
    handle: NonNull<c_void>,
    /// The name that opened it.
    name: &'static str,
}

// SAFETY: a dlopen handle is a process-wide token; dlsym may be called with it from any thread.
unsafe impl Send for Library {}
// SAFETY: see `Send`; `Library` has no interior mutability.
unsafe impl Sync for Library {}

/// Why no candidate could be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenFailure {
    /// The names tried, in order.
    pub names: Vec<&'static str>,
    /// `dlerror()` for each name, in the same order.
    pub errors: Vec<String>,
}

impl Library {
    /// Opens the first of `names` that the dynamic loader finds (its usual search: `RPATH`,
    /// `LD_LIBRARY_PATH`, `/etc/ld.so.cache`, `/lib`, `/usr/lib`).
    pub(crate) fn open_first(names: &[&'static str]) -> Result<Library, OpenFailure> {
        let mut errors = Vec::with_capacity(names.len());
        for &name in names {
            let Ok(c_name) = CString::new(name) else {
                errors.push(format!("{name:?} contains a NUL byte"));
                continue;
            };
            // SAFETY: `c_name` is a valid NUL-terminated string. Opening libcuda runs its
            // initialisers, which have no preconditions on the caller.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            match NonNull::new(handle) {
                Some(handle) => return Ok(Library { handle, name }),
                None => errors.push(last_dl_error()),
            }
        }
        Err(OpenFailure {
            names: names.to_vec(),
            errors,
        })
    }

    /// The name that opened this library, e.g. `libcuda.so.1`.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The address of `symbol`, or `None` when the library does not export it.
    pub(crate) fn symbol(&self, symbol: &CStr) -> Option<NonNull<c_void>> {
        // SAFETY: the handle came from a successful dlopen and is never closed; `symbol` is
        // NUL-terminated. dlsym only looks the name up.
        NonNull::new(unsafe { libc::dlsym(self.handle.as_ptr(), symbol.as_ptr()) })
    }
}

/// The text of `dlerror()` for the failure that just happened on this thread.
fn last_dl_error() -> String {
    // SAFETY: dlerror returns a thread-local NUL-terminated string or null; it is copied before
    // any other dl* call on this thread could overwrite it.
    let text = unsafe { libc::dlerror() };
    if text.is_null() {
        return "the dynamic loader gave no reason".to_string();
    }
    // SAFETY: checked non-null above; NUL-terminated per dlerror's contract.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_reports_every_name_tried_with_the_loaders_reason() {
        let failure = Library::open_first(&["libcuda-ipc-does-not-exist.so.7", "nope.so"])
            .expect_err("no such library");
        assert_eq!(
            failure.names,
            ["libcuda-ipc-does-not-exist.so.7", "nope.so"]
        );
        assert_eq!(failure.errors.len(), 2);
        assert!(
            failure.errors[0].contains("libcuda-ipc-does-not-exist.so.7"),
            "{:?}",
            failure.errors
        );
    }

    #[test]
    fn an_existing_library_resolves_its_symbols_and_not_others() {
        // libc's own shared object is always loaded on a glibc system.
        let lib = Library::open_first(&["libc.so.6"]).expect("libc.so.6");
        assert_eq!(lib.name(), "libc.so.6");
        assert!(lib.symbol(c"getpid").is_some());
        assert!(lib.symbol(c"cuda_ipc_no_such_symbol").is_none());
    }
}
