//! The consumer's side: find a published name, take a lease, map the memory.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::context::Context;
use crate::deadline::Pause;
use crate::device::{Device, GpuUuid};
use crate::error::{Error, Result};
use crate::result;
use crate::service::{client, Expected};

use super::allocation::{close_legacy, map_vmm_fd, measure_legacy};
use super::descriptor::{CheckedDescriptor, Descriptor, TypeTag, WireTransport};
use super::framing::Kind;
use super::identity::{diagnose, legacy_open_hint, ProcessIdentity};
use super::mapping::{self, CacheKey, Lease, MappingKind, NewMapping};
use super::rendezvous::{Names, RendezvousDir, Trust};
use super::shared_buffer::SharedDeviceBuffer;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// How long to wait for the name to be published and the exporter to answer.
    pub timeout: Duration,
    /// The element type's tag, when the exporter set one ([`SharedDeviceBuffer::with_type_tag`]);
    /// default: [`TypeTag::of::<T>()`].
    pub type_tag: Option<TypeTag>,
    /// Refuse the buffer unless it has exactly this many elements.
    pub expected_len: Option<usize>,
    /// Exporter uids trusted besides this process's own and root: the rendezvous directory,
    /// the descriptor and the process answering on the socket (`SO_PEERCRED`) must belong to
    /// one of them. Name the producer's uid here to import across users (with a shared
    /// [`group`](Self::group)). Default: none.
    pub trusted_exporters: Vec<u32>,
    /// The sharing group (see [`ExportOptions::group`](super::ExportOptions::group)): a
    /// group-writable rendezvous directory is accepted only when it is setgid and owned by
    /// this group. Default: `None` (a group-writable directory is refused).
    pub group: Option<u32>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            timeout: Duration::from_secs(30),
            type_tag: None,
            expected_len: None,
            trusted_exporters: Vec::new(),
            group: None,
        }
    }
}

impl ImportOptions {
    /// The defaults with this timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        ImportOptions {
            timeout,
            ..Self::default()
        }
    }

    pub(crate) fn trust(&self) -> Trust {
        Trust {
            uids: self.trusted_exporters.clone(),
            group: self.group,
        }
    }
}

fn check<T: Pod>(d: &Descriptor, opts: &ImportOptions) -> Result<()> {
    d.check_type::<T>(opts.type_tag.unwrap_or_else(TypeTag::of::<T>))?;
    if let Some(n) = opts.expected_len {
        d.check_len(n as u64)?;
    }
    Ok(())
}

/// Checks that `uid` (of the process listening on the socket, the owner of the socket file, or
/// the uid a descriptor names; `role` says which, e.g. "serves the socket") may serve this
/// consumer: it is the descriptor's exporter and a trusted uid.
fn check_exporter(
    names: &Names,
    served_by: u32,
    claimed: u32,
    role: &str,
    trust: &Trust,
) -> Result<()> {
    let refuse = |reason: String| Error::UntrustedExporter {
        path: names.socket.clone(),
        reason,
    };
    if served_by != claimed {
        return Err(refuse(format!(
            "uid {served_by} {role}, but the descriptor names uid {claimed} as its exporter: \
             someone else is answering. Check who can write in {}",
            names.dir.display()
        )));
    }
    if !trust.trusts_uid(served_by) {
        return Err(refuse(format!(
            "it runs as uid {served_by}, which this consumer does not trust (only its own uid \
             {}, root, and ImportOptions::trusted_exporters {:?}): if uid {served_by} is the \
             producer, name it there",
            crate::os::effective_uid(),
            trust.uids
        )));
    }
    Ok(())
}

/// Waits for the directory and its descriptor to appear; returns the opened directory and
/// the descriptor's bytes.
fn wait_for_descriptor(
    names: &Names,
    trust: &Trust,
    deadline: Instant,
    timeout: Duration,
) -> Result<(RendezvousDir, Vec<u8>)> {
    let mut pause = Pause::polling();
    let not_found = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    loop {
        let attempt = RendezvousDir::open(&names.dir, trust).and_then(|dir| {
            let bytes = dir.read_trusted(
                &names.descriptor_name(),
                super::descriptor::MAX_ENCODED_LEN,
                trust,
            )?;
            Ok((dir, bytes))
        });
        match attempt {
            Err(e) if not_found(&e) => {}
            other => return other,
        }
        // A channel of this name (its pool's descriptor, written by a trusted publisher): say
        // so now rather than time out waiting for a descriptor a channel never writes.
        let pool = format!("{}.pool.desc", names.name);
        let channel = RendezvousDir::open(&names.dir, trust)
            .and_then(|dir| dir.read_trusted(&pool, super::descriptor::MAX_ENCODED_LEN, trust))
            .is_ok_and(|b| Descriptor::decode(&b).is_ok());
        if channel {
            return Err(Error::InvalidArgument(format!(
                "{} is a channel (its pool is published as {pool}), not a shared buffer: \
                 subscribe to it with pubsub::Subscriber::subscribe",
                names.dir.join(&names.name).display()
            )));
        }
        if !pause.sleep(deadline) {
            return Err(Error::Timeout {
                what: format!(
                    "buffer {:?} to appear at {} (is the producer running, and does it use the \
                     same directory and name?)",
                    names.name,
                    names.descriptor.display()
                ),
                waited: timeout,
            });
        }
    }
}

impl<'ctx, T: Pod> SharedDeviceBuffer<'ctx, T> {
    /// Imports the buffer published at `path` (`<dir>/<name>`), waiting up to `timeout` for it
    /// to appear. See [`import_with`](Self::import_with).
    pub fn import(ctx: &'ctx Context, path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        Self::import_with(ctx, path, &ImportOptions::with_timeout(timeout))
    }

    /// Imports the buffer published at `path` into `ctx` (any GPU that can access the owner's):
    /// waits for the descriptor, checks it (format, element type, length, and for the legacy
    /// transport the PID collision, self-import and other-host cases) before any driver call,
    /// takes a lease on the exporter's socket (receiving the memory's fd for the fd transport),
    /// and maps the memory — or reuses the mapping this process already has in `ctx`'s
    /// (primary) context. Either way the view is checked against the size really mapped, and
    /// the lease is kept for as long as the memory stays mapped here.
    pub fn import_with(
        ctx: &'ctx Context,
        path: impl AsRef<Path>,
        opts: &ImportOptions,
    ) -> Result<Self> {
        Self::import_offer(ctx, fetch::<T>(path, opts)?)
    }

    /// Maps what [`fetch`] returned, moving the offer's lease into the mapping (so the exporter
    /// knows the memory is in use until the last handle on it is dropped).
    pub fn import_offer(ctx: &'ctx Context, offer: Offer) -> Result<Self> {
        let Offer {
            descriptor,
            fd,
            lease,
            type_checked,
        } = offer;
        if type_checked != TypeCheck::of::<T>() {
            return Err(Error::InvalidArgument(format!(
                "this offer was fetched for another element type than {}: fetch it with \
                 fetch::<{}>",
                std::any::type_name::<T>(),
                std::any::type_name::<T>()
            )));
        }
        import_descriptor(
            ctx,
            &descriptor,
            fd.as_ref().map(|f| f.as_fd()),
            Some(lease),
            Unleased::Refuse,
        )
        // The received fd closes here: the mapping keeps the memory.
    }

    /// Imports from a descriptor and the memory's fd obtained by other means (a channel of
    /// your own): the same checks and cache as [`import_with`](Self::import_with), without the
    /// rendezvous and without a lease. The fd stays the caller's.
    ///
    /// Only the fd transport: its mapping holds its own reference to the memory, so nothing the
    /// exporter does can free it under this buffer. A legacy descriptor is refused here,
    /// because without a lease nothing would stop its owner from freeing the memory while it is
    /// mapped: import it with [`import_with`](Self::import_with) /
    /// [`import_offer`](Self::import_offer), or, taking that responsibility, with the `unsafe`
    /// [`import_legacy_parts`](Self::import_legacy_parts).
    pub fn import_parts(
        ctx: &'ctx Context,
        descriptor: &Descriptor,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
        opts: &ImportOptions,
    ) -> Result<Self> {
        if descriptor.transport == WireTransport::Legacy {
            return Err(Error::Unsupported(
                "import_parts takes no lease, so it cannot keep the owner of a legacy buffer \
                 from freeing it while mapped: use import_with or import_offer (or the unsafe \
                 import_legacy_parts, if you guarantee the memory's lifetime yourself)"
                    .into(),
            ));
        }
        import_parts_unleased(ctx, descriptor, fd, opts, Unleased::Refuse)
    }

    /// [`import_parts`](Self::import_parts) for a legacy descriptor obtained by other means:
    /// the same checks, the same cache, no lease.
    ///
    /// # Safety
    /// Nothing tells the exporter that this process maps the memory: the caller guarantees that
    /// the owner keeps the allocation alive (does not free it) for as long as the returned
    /// buffer, or any clone of it, lives.
    pub unsafe fn import_legacy_parts(
        ctx: &'ctx Context,
        descriptor: &Descriptor,
        opts: &ImportOptions,
    ) -> Result<Self> {
        import_parts_unleased(ctx, descriptor, None, opts, Unleased::Allow)
    }

    /// The mapping of `descriptor` this process already has in `ctx`'s context, if any: no I/O,
    /// no driver call. The descriptor is checked (consistency, then against `T`) and the view
    /// placed against the size really mapped.
    pub fn import_cached(
        ctx: &'ctx Context,
        descriptor: &Descriptor,
        opts: &ImportOptions,
    ) -> Result<Option<Self>> {
        let d = descriptor.checked()?;
        check::<T>(&d, opts)?;
        let key = CacheKey::Buffer {
            id: d.buffer_id,
            generation: d.generation,
        };
        match mapping::lookup(ctx, key) {
            Some(m) => match check_reuse(&m, &d, false, Unleased::Refuse) {
                Ok(()) => Self::from_mapping(ctx, m, &d, None).map(Some),
                Err(e) => {
                    mapping::release_reference(ctx, m);
                    Err(e)
                }
            },
            None => Ok(None),
        }
    }
}

fn import_parts_unleased<'ctx, T: Pod>(
    ctx: &'ctx Context,
    descriptor: &Descriptor,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    opts: &ImportOptions,
    unleased: Unleased,
) -> Result<SharedDeviceBuffer<'ctx, T>> {
    let d = descriptor.checked()?;
    check::<T>(&d, opts)?;
    diagnose(&d, &ProcessIdentity::current(), "the buffer")?;
    import_descriptor(ctx, &d, fd, None, unleased)
}

/// The element type an offer was checked against (size, alignment, and the type's identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeCheck(std::any::TypeId);

impl TypeCheck {
    fn of<T: 'static>() -> TypeCheck {
        TypeCheck(std::any::TypeId::of::<T>())
    }
}

/// What an exporter offered: the checked descriptor, the memory's fd (fd transport), and the
/// lease connection, held until this is dropped or imported with
/// [`SharedDeviceBuffer::import_offer`], which moves the lease into the mapping.
#[derive(Debug)]
pub struct Offer {
    descriptor: CheckedDescriptor,
    fd: Option<OwnedFd>,
    lease: Lease,
    type_checked: TypeCheck,
}

impl Offer {
    /// The descriptor, checked against the element type and options.
    pub fn descriptor(&self) -> &CheckedDescriptor {
        &self.descriptor
    }

    /// The exported memory's descriptor (fd transport only), borrowed: it closes with the
    /// offer. To map the memory, use [`SharedDeviceBuffer::import_offer`].
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Waits for a "ready" announcement of a frame `>= frame` on the lease.
    pub fn wait_ready(&mut self, frame: u64, timeout: Duration) -> Result<u64> {
        self.lease.wait_ready(frame, timeout)
    }
}

/// Everything an import does before the driver: waits for `path` to be published; opens the
/// directory once and checks it and its ancestors; reads and checks the descriptor through it
/// as an array of `T` (and the PID, namespace and host of its exporter); connects to the
/// exporter through the opened directory and checks that the process answering
/// (`SO_PEERCRED`) is the descriptor's exporter and a uid this consumer trusts; says hello, and
/// receives the offer (exactly one fd for the fd transport, none for legacy). An exporter that
/// is busy is asked again until the timeout. Every received fd that is not returned is closed.
pub fn fetch<T: Pod>(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<Offer> {
    let names = Names::for_path(path)?;
    let deadline = crate::deadline::after(opts.timeout);
    let trust = opts.trust();
    let own = ProcessIdentity::current();
    let what = format!("buffer {:?}", names.name);
    let mut republished = Pause::polling();
    // An offer of a newer generation than the file named: if the time runs out while the
    // descriptor is read again, this is the error.
    let mut mismatch: Option<Error> = None;
    let timed_out = |e: Error, mismatch: &mut Option<Error>| match (e, mismatch.take()) {
        (Error::Timeout { .. }, Some(m)) => m,
        (e, _) => e,
    };
    loop {
        let (dir, bytes) = wait_for_descriptor(&names, &trust, deadline, opts.timeout)
            .map_err(|e| timed_out(e, &mut mismatch))?;
        let file_desc = Descriptor::decode(&bytes)?;
        check::<T>(&file_desc, opts)?;
        diagnose(&file_desc, &own, &what)?;
        let claimed = file_desc.exporter_uid;
        check_exporter(&names, claimed, claimed, "is named", &trust)?;
        let check_uid = |uid: u32, role: &str| check_exporter(&names, uid, claimed, role, &trust);
        let expect = Expected {
            buffer_id: file_desc.buffer_id,
            generation: file_desc.generation,
        };
        let answered = client::connect(
            &dir,
            &names,
            &check_uid,
            Some(expect),
            deadline,
            opts.timeout,
            "the offer",
        )
        .map_err(|e| timed_out(e, &mut mismatch))?;
        let peer = format!("exporter at {}", names.socket.display());
        let mut offer = answered.first;
        if !matches!(offer.kind, Kind::Offer | Kind::Mismatch) {
            return Err(Error::Protocol {
                peer,
                detail: format!("expected an offer, got {:?}", offer.kind),
            });
        }
        // A `Mismatch` (the exporter serves another buffer than the file named, and said so
        // without granting a lease) and an offer that is not the file's (an exporter that did
        // not check) are the same finding.
        let d = Descriptor::decode(&offer.payload)?;
        if offer.kind == Kind::Mismatch || d != file_desc {
            // The exporter restarted between our read and our connection (a newer generation
            // of this name, by the same exporter uid): read the descriptor again. Anything
            // else is not the buffer asked for.
            let newer = d.generation > file_desc.generation && d.exporter_uid == claimed;
            let error = offer_mismatch(&names, &file_desc, &d, newer);
            if newer && republished.sleep(deadline) {
                mismatch = Some(error);
                continue;
            }
            return Err(error);
        }
        let expected_fds = usize::from(d.transport == WireTransport::Fd);
        if offer.fds.len() != expected_fds {
            return Err(Error::Protocol {
                peer,
                detail: format!(
                    "a {} offer must carry {expected_fds} file descriptor(s), this one carried {}",
                    d.transport.name(),
                    offer.fds.len()
                ),
            });
        }
        if let Some(fd) = offer.fds.first() {
            check_memory_fd(fd.as_fd()).map_err(|detail| Error::Protocol {
                peer: peer.clone(),
                detail,
            })?;
        }
        let stream = answered.stream;
        return Ok(Offer {
            descriptor: d.checked()?,
            type_checked: TypeCheck::of::<T>(),
            fd: offer.fds.pop(),
            lease: Lease {
                identity: crate::os::peer_socket_name(stream.as_fd())
                    .ok()
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8_lossy(&n).into_owned())
                    .unwrap_or_else(|| peer.clone()),
                stream,
                reader: answered.reader,
                latest_ready: None,
                peer,
                announced: Arc::default(),
            },
        });
    }
}

/// The error for an offer that is not the buffer the descriptor file names.
fn offer_mismatch(names: &Names, file: &Descriptor, offered: &Descriptor, newer: bool) -> Error {
    let show = |d: &Descriptor| {
        let id: String = d.buffer_id[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{id}… generation {} (uid {})", d.generation, d.exporter_uid)
    };
    let hint = if newer {
        "The exporter kept republishing the name until the timeout: try again once it is \
         stable"
            .to_string()
    } else {
        format!(
            "Someone who can write in {} renamed another exporter's socket or files into this \
             name: make the directory sticky (chmod +t) or not group-writable",
            names.dir.display()
        )
    };
    Error::OfferMismatch {
        path: names.socket.clone(),
        expected: show(file),
        offered: show(offered),
        hint,
    }
}

/// Checks what kind of file an exporter sent as the memory's fd: the driver's exports are
/// character devices or anonymous inodes (a memory file stands in for one in tests); a
/// directory, FIFO, socket, link or block device is refused before the driver sees it.
fn check_memory_fd(fd: std::os::fd::BorrowedFd<'_>) -> std::result::Result<(), String> {
    let st = crate::os::fstat(fd).map_err(|e| format!("fstat of the memory's fd: {e}"))?;
    if st.is_dir()
        || matches!(
            st.mode & libc::S_IFMT,
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFLNK | libc::S_IFBLK
        )
    {
        return Err(format!(
            "it sent {} as the memory's file descriptor, which no CUDA export is",
            st.kind_name()
        ));
    }
    Ok(())
}

/// Maps what `d` describes into `ctx`, through the process-wide cache, and places the view
/// against the size really mapped. `fd` is required for the fd transport. `lease` (if any)
/// joins the mapping's leases, new or reused, so that it stays open while the memory is mapped.
fn import_descriptor<'ctx, T: Pod>(
    ctx: &'ctx Context,
    d: &CheckedDescriptor,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    lease: Option<Lease>,
    unleased: Unleased,
) -> Result<SharedDeviceBuffer<'ctx, T>> {
    let key = CacheKey::Buffer {
        id: d.buffer_id,
        generation: d.generation,
    };
    let (mapping, reused) = mapping::open_or_reuse(ctx, key, || open(ctx, d, fd))?;
    if reused {
        if let Err(e) = check_reuse(&mapping, d, lease.is_some(), unleased) {
            mapping::release_reference(ctx, mapping);
            return Err(e);
        }
    }
    let lease = lease.map(|l| mapping.add_lease(l));
    SharedDeviceBuffer::from_mapping(ctx, mapping, d, lease)
}

/// Whether a cached mapping may serve the import of `d`: the same transport, and — for a
/// caller that brings no lease and has not taken the lifetime on itself (`unleased`) — not a
/// legacy mapping made without a lease (its owner may legally free it under it).
fn check_reuse(
    mapping: &mapping::ImportedMapping,
    d: &CheckedDescriptor,
    brings_lease: bool,
    unleased: Unleased,
) -> Result<()> {
    if mapping.is_legacy() != (d.transport == WireTransport::Legacy) {
        return Err(Error::InvalidArgument(format!(
            "this process maps buffer {:02x?} (generation {}) with the other transport than the \
             descriptor's {}: the descriptor is not the exporter's",
            &d.buffer_id[..4],
            d.generation,
            d.transport.name()
        )));
    }
    if mapping.is_legacy() && !brings_lease && !mapping.is_leased() && unleased == Unleased::Refuse
    {
        return Err(lease_less_legacy());
    }
    Ok(())
}

fn lease_less_legacy() -> Error {
    Error::Unsupported(
        "this process maps that legacy buffer without a lease (import_legacy_parts), so nothing \
         keeps its owner from freeing it: import it with import_with / import_offer to hold a \
         lease"
            .into(),
    )
}

/// Whether an import without a lease may reuse a lease-less legacy mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unleased {
    /// Safe callers: no.
    Refuse,
    /// `unsafe` callers, who answer for the memory's lifetime: yes.
    Allow,
}

/// Opens (maps) what `d` describes in `ctx` and measures it; undoes its own work on error.
fn open(
    ctx: &Context,
    d: &CheckedDescriptor,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<NewMapping> {
    let importer = ctx.device();
    let owner = Device::by_uuid(&GpuUuid(d.owner_uuid))?;
    if owner != importer && !importer.can_access_peer(&owner)? {
        return Err(Error::PeerAccessUnsupported {
            owner: owner.label(),
            importer: importer.label(),
        });
    }
    match d.transport {
        WireTransport::Legacy => {
            let _bound = ctx.bind()?;
            // SAFETY: the handle came with a checked descriptor; the driver validates it, and
            // the mapping is closed on error here or when its last reference drops.
            let base = unsafe { result::ipc_open_mem_handle(&d.handle) }.map_err(|e| {
                Error::ImportFailed {
                    source: e,
                    hint: legacy_open_hint(d, &ProcessIdentity::current()),
                }
            })?;
            match measure_legacy(base) {
                Ok(size) => Ok(NewMapping {
                    kind: MappingKind::Legacy,
                    base,
                    size,
                }),
                Err(e) => {
                    close_legacy(ctx, base);
                    Err(e)
                }
            }
        }
        WireTransport::Fd => {
            let fd = fd.ok_or_else(|| {
                Error::InvalidArgument("an fd-transport import needs the exported fd".into())
            })?;
            let size = usize::try_from(d.alloc_size).map_err(|_| {
                Error::InvalidArgument(format!("{} bytes do not fit usize", d.alloc_size))
            })?;
            // cuMemMap maps exactly `size` bytes or fails: the size mapped is measured by its
            // success, whatever the descriptor claimed.
            let base = map_vmm_fd(ctx, fd, size).map_err(|e| match e {
                Error::Driver(source) => Error::ImportFailed {
                    source,
                    hint: "the received descriptor is not a CUDA allocation of the size the \
                           descriptor states, or this GPU cannot map it"
                        .into(),
                },
                other => other,
            })?;
            Ok(NewMapping {
                kind: MappingKind::Vmm,
                base,
                size: d.alloc_size,
            })
        }
    }
}
