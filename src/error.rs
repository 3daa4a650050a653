//! The crate's error type.
//!
//! Every fallible operation returns [`Result<T>`](Result). Driver failures keep the call and the
//! `CUresult` ([`DriverError`]); everything else says what went wrong in this crate's terms and,
//! where there is one, what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::result::{code_name, codes, DriverError};

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cuda-ipc.
///
/// `Debug` prints the variant's name and the same text as `Display`, so that
/// `fn main() -> Result<()>` shows the helpful message:
///
/// ```
/// let e = cuda_ipc::Error::InvalidArgument("len is 0".into());
/// assert_eq!(format!("{e:?}"), "InvalidArgument: invalid argument: len is 0");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A driver call failed.
    #[error(transparent)]
    Driver(#[from] DriverError),

    /// The NVIDIA driver library (`libcuda.so.1`) could not be loaded: no driver is installed,
    /// or it is not visible to this process (a container without the NVIDIA runtime).
    #[error(
        "the NVIDIA driver library could not be loaded: looked for {searched}: {reason}. \
         Install the NVIDIA driver on this machine (it provides libcuda.so.1); in a container, \
         run it with the NVIDIA container toolkit (`docker run --gpus all`, or in Kubernetes a \
         GPU claim or nvidia.com/gpu limit) so that the driver libraries are mounted into it; \
         or add the directory holding libcuda.so.1 to LD_LIBRARY_PATH"
    )]
    DriverNotFound {
        /// The library names and the search path that were tried.
        searched: String,
        /// The dynamic loader's reason (`dlerror`).
        reason: String,
    },

    /// The driver loaded but sees no GPU.
    #[error(
        "no CUDA device is visible to this process (cuInit returned CUDA_ERROR_NO_DEVICE). \
         Check that `nvidia-smi` lists a GPU, that /dev/nvidia* exist in this container \
         (in Kubernetes: the pod has a GPU claim or nvidia.com/gpu limit), and which GPUs the \
         process may see: {visibility}"
    )]
    NoDevice {
        /// The visibility variables and device nodes as this process sees them.
        visibility: String,
    },

    /// No visible GPU has this ordinal.
    #[error("GPU ordinal {ordinal} does not exist: this process sees {count} GPU(s) (ordinals 0..{count})")]
    NoSuchOrdinal {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many GPUs the process sees.
        count: usize,
    },

    /// No visible GPU has this UUID.
    #[error(
        "no visible GPU has UUID {uuid}; this process sees: [{visible}]. Processes in different \
         pods may number GPUs differently, but they must be given the same GPUs (the same \
         ResourceClaim) for one to map memory of the other"
    )]
    DeviceNotFound {
        /// The UUID asked for.
        uuid: String,
        /// The UUIDs this process sees, comma-separated.
        visible: String,
    },

    /// A string is not a GPU UUID.
    #[error("{input:?} is not a GPU UUID (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    BadUuid {
        /// What was given.
        input: String,
    },

    /// An argument is out of range or inconsistent (lengths, alignment, sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Two lengths that must match do not.
    #[error("length mismatch: {what}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// Which operation.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        actual: usize,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path where there is one.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A shared descriptor could not be decoded or does not match what was asked for.
    #[error(transparent)]
    Descriptor(#[from] crate::ipc::DescriptorError),

    /// The device cannot do what the transport needs.
    #[error("{device} does not support the {transport} transport: {reason}")]
    TransportUnsupported {
        /// The device, as `GPU n (name, uuid)`.
        device: String,
        /// The transport asked for.
        transport: &'static str,
        /// Which capability is missing.
        reason: &'static str,
    },

    /// The importing GPU cannot access memory of the owning GPU.
    #[error(
        "GPU {importer} cannot access memory of GPU {owner} (cuDeviceCanAccessPeer is false): \
         import the buffer on the owner GPU, or copy it through the host"
    )]
    PeerAccessUnsupported {
        /// The owner GPU.
        owner: String,
        /// The importing GPU.
        importer: String,
    },

    /// Legacy IPC between two processes with the same PID in different PID namespaces.
    #[error(
        "the exporter of {what} is PID {pid} in PID namespace {exporter_ns}, and this process is \
         PID {pid} too, in PID namespace {own_ns}: the CUDA driver takes a legacy IPC handle from \
         a process with its own PID for a self-import and refuses it (cuIpcOpenMemHandle: \
         CUDA_ERROR_INVALID_CONTEXT, \"invalid device context\"). This is what happens between \
         two Kubernetes pods with hostPID: false, whose main processes are both PID 1. Fix it \
         with one of: the fd transport (Transport::Fd, which does not depend on PIDs), \
         `hostPID: true` on both pods, or both containers in one pod with \
         `shareProcessNamespace: true`"
    )]
    PidCollision {
        /// What was being imported.
        what: String,
        /// The PID both processes have.
        pid: u32,
        /// The exporter's PID namespace inode.
        exporter_ns: u64,
        /// This process's PID namespace inode.
        own_ns: u64,
    },

    /// A process tried to import its own export.
    #[error(
        "{what} was exported by this very process (PID {pid}): use the buffer directly \
         instead of importing it; the driver refuses a legacy self-import"
    )]
    SelfImport {
        /// What was being imported.
        what: String,
        /// This process's PID.
        pid: u32,
    },

    /// The exporter runs on another machine (another boot).
    #[error(
        "{what} was exported on another host or boot (boot id {exporter_boot}, this host: \
         {own_boot}): CUDA IPC only works between processes on one machine. Is the shared \
         directory a network volume shared across nodes? Schedule both pods on one node"
    )]
    DifferentHost {
        /// What was being imported.
        what: String,
        /// The exporter's boot id.
        exporter_boot: String,
        /// This machine's boot id.
        own_boot: String,
    },

    /// A driver call failed during an import, with what the descriptor says about the cause.
    #[error("{source}. {hint}")]
    ImportFailed {
        /// The driver error.
        #[source]
        source: DriverError,
        /// What is likely wrong and what to do.
        hint: String,
    },

    /// A view does not fit the memory actually mapped: the descriptor (or the caller's offset
    /// and length) claims more than the driver mapped. Nothing was handed out.
    #[error(
        "the requested view does not fit the imported memory: {detail} (measured after mapping: \
         {mapped} bytes). The descriptor is corrupt, stale or lies about the buffer; if you \
         passed an offset and length yourself, check them against the exporter's allocation"
    )]
    MappingTooSmall {
        /// Bytes really mapped.
        mapped: u64,
        /// What does not fit.
        detail: String,
    },

    /// Loading a kernel module or finding a kernel in it failed, with the likely cause and
    /// the fix (see [`crate::module`]).
    #[error("{source}. {hint}")]
    Module {
        /// The driver error.
        #[source]
        source: DriverError,
        /// What is likely wrong and what to do.
        hint: String,
    },

    /// Waiting for something took longer than allowed.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long was waited.
        waited: Duration,
    },

    /// The peer on the other end of a rendezvous socket broke the protocol.
    #[error("protocol error with {peer}: {detail}")]
    Protocol {
        /// The socket or peer.
        peer: String,
        /// What was wrong.
        detail: String,
    },

    /// The exporter refused this process.
    #[error("{path}: the exporter refused this consumer: {reason}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// The reason the exporter gave.
        reason: String,
    },

    /// Every connection slot of the exporter is taken (its `max_connections`); it said so
    /// until the import's timeout ran out.
    #[error(
        "{path}: the exporter is busy: {detail}. Try again later (a longer import timeout \
         keeps retrying), or have the producer raise ExportOptions::max_connections"
    )]
    Busy {
        /// The socket path.
        path: PathBuf,
        /// What the exporter said.
        detail: String,
    },

    /// Whoever answers on the rendezvous socket is not an exporter this consumer trusts
    /// (checked with `SO_PEERCRED` before any memory is accepted).
    #[error("{path}: not importing from this exporter: {reason}")]
    UntrustedExporter {
        /// The socket path.
        path: PathBuf,
        /// Who answered and why it is not trusted, and what to do.
        reason: String,
    },

    /// The rendezvous directory is not safe to use.
    #[error("{path}: {reason}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// Why it is refused and what to do.
        reason: String,
    },

    /// A value was asked of an object that does not have it (e.g. the fd of a legacy buffer).
    #[error("{0}")]
    Unsupported(String),

    /// The name is taken: a live exporter or channel publisher holds its lock, or something
    /// that is not one of ours sits at its socket's path. Nothing was published.
    #[error("{}: the name is in use: {detail}", .path.display())]
    NameInUse {
        /// The path that was to be published (`<dir>/<name>`).
        path: PathBuf,
        /// Who or what holds it, and what to do.
        detail: String,
    },

    /// What the exporter offered over its socket is not the buffer the descriptor file names
    /// (another buffer's id or generation): someone renamed another exporter's socket or files
    /// into this name, or the exporter was republished more than once during the import.
    /// Nothing was mapped.
    #[error(
        "{}: the exporter offered buffer {offered}, but the descriptor file names buffer \
         {expected}: not importing a buffer other than the one asked for. {hint}",
        .path.display()
    )]
    OfferMismatch {
        /// The socket path.
        path: PathBuf,
        /// The buffer the descriptor file names (id prefix and generation).
        expected: String,
        /// The buffer the exporter offered (id prefix and generation).
        offered: String,
        /// What is likely wrong and what to do.
        hint: String,
    },

    /// The channel was closed on the publisher's side: a publish failed half-way (its
    /// subscribers were told and released), so no more frames can be loaned.
    #[error(
        "channel {}: closed ({reason}); create a new Publisher to go on",
        .channel.display()
    )]
    ChannelClosed {
        /// The channel's path.
        channel: PathBuf,
        /// Why it was closed.
        reason: String,
    },

    /// The channel's publisher is gone: it closed the channel or its process ended. Frames
    /// not yet received are lost; a restarted publisher is a new channel instance, which a new
    /// [`Subscriber`](crate::pubsub::Subscriber) joins.
    #[error(
        "channel {}: the publisher is gone ({detail}); subscribe again to follow a restarted \
         publisher",
        .channel.display()
    )]
    PublisherGone {
        /// The channel's path.
        channel: PathBuf,
        /// Whether it closed the channel (dropped its `Publisher`) rather than died.
        closed: bool,
        /// How it went.
        detail: String,
    },
}

impl std::fmt::Debug for Error {
    /// `Variant: <Display text>`: the helpful text, also for `fn main() -> Result<()>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {self}", self.variant_name())
    }
}

impl Error {
    /// The variant's name, e.g. `"NoDevice"`.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Error::Driver(_) => "Driver",
            Error::DriverNotFound { .. } => "DriverNotFound",
            Error::NoDevice { .. } => "NoDevice",
            Error::NoSuchOrdinal { .. } => "NoSuchOrdinal",
            Error::DeviceNotFound { .. } => "DeviceNotFound",
            Error::BadUuid { .. } => "BadUuid",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::LengthMismatch { .. } => "LengthMismatch",
            Error::Io { .. } => "Io",
            Error::Descriptor(_) => "Descriptor",
            Error::TransportUnsupported { .. } => "TransportUnsupported",
            Error::PeerAccessUnsupported { .. } => "PeerAccessUnsupported",
            Error::PidCollision { .. } => "PidCollision",
            Error::SelfImport { .. } => "SelfImport",
            Error::DifferentHost { .. } => "DifferentHost",
            Error::ImportFailed { .. } => "ImportFailed",
            Error::MappingTooSmall { .. } => "MappingTooSmall",
            Error::Module { .. } => "Module",
            Error::Timeout { .. } => "Timeout",
            Error::Protocol { .. } => "Protocol",
            Error::Refused { .. } => "Refused",
            Error::UnsafeDirectory { .. } => "UnsafeDirectory",
            Error::Busy { .. } => "Busy",
            Error::UntrustedExporter { .. } => "UntrustedExporter",
            Error::Unsupported(_) => "Unsupported",
            Error::PublisherGone { .. } => "PublisherGone",
            Error::NameInUse { .. } => "NameInUse",
            Error::OfferMismatch { .. } => "OfferMismatch",
            Error::ChannelClosed { .. } => "ChannelClosed",
        }
    }

    /// An [`Error::Io`] with a context line.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The driver error inside, if this is one.
    pub fn driver_error(&self) -> Option<&DriverError> {
        match self {
            Error::Driver(e) => Some(e),
            Error::ImportFailed { source, .. } => Some(source),
            Error::Module { source, .. } => Some(source),
            _ => None,
        }
    }
}
