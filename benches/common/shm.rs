//! A few 64-bit words shared between a bench and its helper processes: a file in the bench's
//! directory, mapped `MAP_SHARED` by each of them. For coordination that must cost nothing
//! per frame (an atomic load), unlike a file read or a socket message.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// `len` shared atomic words.
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the words are atomics in a shared mapping that lives as long as the value.
unsafe impl Send for SharedWords {}
// SAFETY: as above; every access is atomic.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Creates (or truncates to zero) the file at `path` with `len` words, and maps it.
    pub fn create(path: &Path, len: usize) -> io::Result<SharedWords> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.set_len(Self::bytes(len)? as u64)?;
        Self::map(&f, len)
    }

    /// Maps the existing file at `path`, which must hold at least `len` words.
    pub fn open(path: &Path, len: usize) -> io::Result<SharedWords> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        if f.metadata()?.len() < Self::bytes(len)? as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds fewer than {len} words", path.display()),
            ));
        }
        Self::map(&f, len)
    }

    fn bytes(len: usize) -> io::Result<usize> {
        len.checked_mul(8)
            .filter(|&b| b > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad word count"))
    }

    fn map(f: &std::fs::File, len: usize) -> io::Result<SharedWords> {
        let bytes = Self::bytes(len)?;
        // SAFETY: a fresh shared mapping of `bytes` bytes of an open file that is at least that
        // long; the kernel picks the address. The fd may be closed after mmap returns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedWords { ptr, len })
    }

    /// Word `i`.
    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len, "shared word {i} of {}", self.len);
        // SAFETY: i < len; the mapping is page-aligned (so every word is aligned), readable
        // and writable, and lives as long as `self`; AtomicU64 has the layout of u64.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`; no reference outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 8) };
    }
}
