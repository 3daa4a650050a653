//! The consumer's side: find a published name, take a lease, map the memory.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::context::Context;
use crate::device::{Device, GpuUuid};
use crate::error::{Error, Result};
use crate::result;

use super::allocation::{close_legacy, map_vmm_fd, measure_legacy};
use super::descriptor::{CheckedDescriptor, Descriptor, TypeTag, WireTransport};
use super::framing::{self, FrameReader, Kind};
use super::identity::{diagnose, legacy_open_hint, ProcessIdentity};
use super::mapping::{self, CacheKey, Lease, MappingKind, NewMapping};
use super::rendezvous::{deadline_after, Names, RendezvousDir, Trust};
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

/// Connects to the exporter's socket through the opened directory, retrying while it is not
/// (yet) listening or its backlog is full, until `deadline`.
pub(crate) fn connect(
    dir: &RendezvousDir,
    names: &Names,
    deadline: Instant,
    timeout: Duration,
) -> Result<UnixStream> {
    let mut interval = Duration::from_millis(1);
    let target = dir.proc_path(&names.socket_name());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::os::connect_unix(&target, left) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::WouldBlock
                ) =>
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        what: format!(
                            "the exporter to accept connections at {} (last error: {e}; has the \
                             producer exited, or is it overloaded?)",
                            names.socket.display()
                        ),
                        waited: timeout,
                    });
                }
                std::thread::sleep(interval.min(left));
                interval = (interval * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "connecting to {}{}",
                        names.socket.display(),
                        crate::os::fd_limit_hint(&e)
                    ),
                    e,
                ))
            }
        }
    }
}

/// Checks that `uid` (of the process listening on the socket, or named by a descriptor) may
/// serve this consumer: it is the descriptor's exporter and a trusted uid.
fn check_exporter(names: &Names, served_by: u32, claimed: u32, trust: &Trust) -> Result<()> {
    let refuse = |reason: String| Error::UntrustedExporter {
        path: names.socket.clone(),
        reason,
    };
    if served_by != claimed {
        return Err(refuse(format!(
            "the socket is served by uid {served_by}, but the descriptor names uid {claimed} as \
             its exporter: someone else is answering. Check who can write in {}",
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
    let mut interval = Duration::from_millis(1);
    let not_found = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    loop {
        let attempt = RendezvousDir::open(&names.dir, trust).and_then(|dir| {
            let bytes = dir.read_trusted(
                &names.descriptor_name(),
                super::descriptor::ENCODED_LEN,
                trust,
            )?;
            Ok((dir, bytes))
        });
        match attempt {
            Err(e) if not_found(&e) => {}
            other => return other,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
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
        std::thread::sleep(interval.min(left));
        interval = (interval * 2).min(Duration::from_millis(50));
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
    let deadline = deadline_after(opts.timeout);
    let trust = opts.trust();
    let (dir, bytes) = wait_for_descriptor(&names, &trust, deadline, opts.timeout)?;
    let file_desc = Descriptor::decode(&bytes)?;
    check::<T>(&file_desc, opts)?;
    let own = ProcessIdentity::current();
    let what = format!("buffer {:?}", names.name);
    diagnose(&file_desc, &own, &what)?;
    if !trust.trusts_uid(file_desc.exporter_uid) {
        check_exporter(
            &names,
            file_desc.exporter_uid,
            file_desc.exporter_uid,
            &trust,
        )?;
    }

    let peer = format!("exporter at {}", names.socket.display());
    let mut busy_wait = Duration::from_millis(5);
    // What the exporter said when it was last busy: once the time is up, that is the error.
    let mut busy: Option<String> = None;
    let busy_error = |detail: String| Error::Busy {
        path: names.socket.clone(),
        detail,
    };
    let (stream, reader, mut offer) = loop {
        let stream = match connect(&dir, &names, deadline, opts.timeout) {
            Ok(s) => s,
            Err(Error::Timeout { .. }) if busy.is_some() => {
                return Err(busy_error(busy.unwrap_or_default()))
            }
            Err(e) => return Err(e),
        };
        let server = crate::os::peer_credentials(stream.as_fd())
            .map_err(|e| Error::io(format!("SO_PEERCRED of {peer}"), e))?;
        check_exporter(&names, server.uid, file_desc.exporter_uid, &trust)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| Error::io("setting a socket timeout", e))?;
        // An exporter that refuses us may close before our hello arrives; its refusal is still
        // in our receive buffer, so read before reporting a failed send.
        let hello = framing::send(
            &stream,
            Kind::Hello,
            &framing::PROTOCOL_VERSION.to_le_bytes(),
            None,
        );
        let mut reader = FrameReader::new();
        let message = match reader.read_within(&stream, left, &peer) {
            Ok(m) => m,
            Err(e) => {
                return Err(match (hello, e) {
                    (_, Error::Timeout { .. }) if busy.is_some() => {
                        busy_error(busy.unwrap_or_default())
                    }
                    (Err(he), _) => Error::io(format!("sending hello to {peer}"), he),
                    (Ok(()), Error::Timeout { .. }) => Error::Timeout {
                        what: format!("the offer of {peer}"),
                        waited: opts.timeout,
                    },
                    (Ok(()), other) => other,
                })
            }
        };
        if message.kind != Kind::Busy {
            break (stream, reader, message);
        }
        let detail = String::from_utf8_lossy(&message.payload).into_owned();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(busy_error(detail));
        }
        busy = Some(detail);
        std::thread::sleep(busy_wait.min(left));
        busy_wait = (busy_wait * 2).min(Duration::from_millis(100));
    };
    match offer.kind {
        Kind::Offer => {}
        Kind::Refuse => {
            return Err(Error::Refused {
                path: names.socket.clone(),
                reason: String::from_utf8_lossy(&offer.payload).into_owned(),
            })
        }
        other => {
            return Err(Error::Protocol {
                peer,
                detail: format!("expected an offer, got {other:?}"),
            })
        }
    }
    let d = Descriptor::decode(&offer.payload)?;
    if d != file_desc {
        // Republished between our read and our connection: check the new one too.
        check::<T>(&d, opts)?;
        diagnose(&d, &own, &what)?;
        check_exporter(&names, file_desc.exporter_uid, d.exporter_uid, &trust)?;
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
    Ok(Offer {
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
            reader,
            latest_ready: None,
            peer,
            announced: Arc::default(),
        },
    })
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
