//! The descriptor: what one process tells another about a shared buffer.
//!
//! A descriptor is a fixed-size, little-endian, versioned record that both transports share:
//! 216 bytes (format version 1), or 352 with a [`TensorLayout`] (version 2). It names the
//! element type, the length, the owner GPU and the exporting process, carries the legacy handle
//! where there is one (and the tensor's data type, shape and strides where the exporter gave
//! them), and ends with a checksum over all of it. [`Descriptor::decode`] rejects anything malformed with its own [`DescriptorError`], and
//! nothing calls the driver before a descriptor has decoded and matched what the importer asked
//! for.
//!
//! ```
//! use cuda_ipc::ipc::{Descriptor, DescriptorError, TypeTag};
//! let mut d = Descriptor::example();
//! d.type_tag = TypeTag::of::<f32>().0;
//! let bytes = d.encode();
//! let back = Descriptor::decode(&bytes)?;
//! assert_eq!(back, d);
//! back.check_type::<f32>(TypeTag::of::<f32>())?;
//! assert!(matches!(back.check_type::<u32>(TypeTag::of::<u32>()), Err(DescriptorError::TypeMismatch { .. })));
//!
//! let mut corrupt = bytes;
//! corrupt[100] ^= 1;
//! assert_eq!(Descriptor::decode(&corrupt), Err(DescriptorError::ChecksumMismatch));
//! # Ok::<(), DescriptorError>(())
//! ```

use bytemuck::{Pod, Zeroable};

use super::tensor_layout::{TensorLayout, LAYOUT_WIRE_LEN};

/// The first 8 bytes of every descriptor.
pub const MAGIC: [u8; 8] = *b"CUDAIPC\0";
/// The format version of a descriptor without a tensor layout (216 bytes).
pub const VERSION: u32 = 1;
/// The format version of a descriptor with a [`TensorLayout`] (352 bytes): version 1's fields,
/// then the layout, then the checksum. This crate reads and writes both.
pub const LAYOUT_VERSION: u32 = 2;
/// Size of an encoded version-1 descriptor (without a layout).
pub const ENCODED_LEN: usize = std::mem::size_of::<RawDescriptor>();
/// Size of an encoded version-2 descriptor (with a layout): the largest a descriptor can be.
pub const MAX_ENCODED_LEN: usize = ENCODED_LEN + LAYOUT_WIRE_LEN;

/// How the memory travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WireTransport {
    /// `cuIpcGetMemHandle` handle inside the descriptor.
    Legacy = 1,
    /// VMM allocation exported as a POSIX fd, sent over the rendezvous socket.
    Fd = 2,
}

impl WireTransport {
    /// Its name in messages: `legacy` or `fd`.
    pub fn name(self) -> &'static str {
        match self {
            WireTransport::Legacy => "legacy",
            WireTransport::Fd => "fd",
        }
    }
}

/// A fingerprint of an element type: FNV-1a 64 of its type name, or of a tag the program
/// chooses (to share with programs in other languages, or across compiler versions, whose type
/// names may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeTag(pub u64);

impl TypeTag {
    /// The fingerprint of `std::any::type_name::<T>()`.
    pub fn of<T: ?Sized>() -> TypeTag {
        TypeTag(fnv1a(std::any::type_name::<T>().as_bytes()))
    }
    /// The fingerprint of a name of your choosing, e.g. `"my-app/Frame/v2"`.
    pub fn named(name: &str) -> TypeTag {
        TypeTag(fnv1a(name.as_bytes()))
    }
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The wire layout. Every integer is little-endian; there is no padding.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct RawDescriptor {
    magic: [u8; 8],
    version: u32,
    transport: u32,
    elem_size: u32,
    elem_align: u32,
    type_tag: u64,
    len: u64,
    byte_size: u64,
    alloc_size: u64,
    offset: u64,
    owner_uuid: [u8; 16],
    exporter_pid: u32,
    exporter_uid: u32,
    pid_namespace: u64,
    boot_id: [u8; 16],
    buffer_id: [u8; 16],
    generation: u64,
    signal_offset: u64,
    handle: [u8; 64],
    checksum: u64,
}

const _: () = assert!(ENCODED_LEN == 216);
/// Bytes of the two 32-bit signal words.
pub(crate) const SIGNAL_WORDS_LEN: u64 = 8;
const CHECKED_LEN: usize = ENCODED_LEN - 8;

/// A decoded, checked descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// How the memory travels.
    pub transport: WireTransport,
    /// `size_of` the element type.
    pub elem_size: u32,
    /// `align_of` the element type.
    pub elem_align: u32,
    /// The element type's [`TypeTag`].
    pub type_tag: u64,
    /// Elements.
    pub len: u64,
    /// Bytes of data: `len * elem_size`.
    pub byte_size: u64,
    /// Bytes of the whole allocation (data, signal words, rounding).
    pub alloc_size: u64,
    /// Where the data starts in the allocation.
    pub offset: u64,
    /// The owner GPU's UUID.
    pub owner_uuid: [u8; 16],
    /// The exporter's PID, in its own PID namespace.
    pub exporter_pid: u32,
    /// The exporter's effective uid.
    pub exporter_uid: u32,
    /// The inode of the exporter's `/proc/self/ns/pid` (0 if unknown).
    pub pid_namespace: u64,
    /// The exporter's `/proc/sys/kernel/random/boot_id`.
    pub boot_id: [u8; 16],
    /// Random id of this buffer, new for every allocation.
    pub buffer_id: [u8; 16],
    /// Publication generation under one name: a restarted producer publishes a higher one.
    pub generation: u64,
    /// Where the two 32-bit signal words start in the allocation (0: none).
    pub signal_offset: u64,
    /// The `cuIpcGetMemHandle` bytes (legacy), zeros otherwise.
    pub handle: [u8; 64],
    /// The tensor the bytes hold, when the exporter said ([`SharedDeviceBuffer::with_layout`](
    /// super::SharedDeviceBuffer::with_layout)); written as format version 2.
    pub layout: Option<TensorLayout>,
}

/// A [`Descriptor`] whose fields were checked to agree with each other: the data range and
/// the signal words lie inside `alloc_size`, `len * elem_size == byte_size`, the offset is
/// aligned, the alignment is a power of two. Only [`Descriptor::checked`] makes one, so every
/// descriptor that reaches a mapping has been checked; its fields cannot be edited afterwards.
///
/// Consistency is not truth: an exporter can still lie about `alloc_size`. The import measures
/// the real size of what it mapped and checks the view against that, never against the
/// descriptor alone.
///
/// ```
/// use cuda_ipc::ipc::{Descriptor, DescriptorError};
/// let mut d = Descriptor::example();
/// assert!(d.checked().is_ok());
/// d.offset = d.alloc_size; // the data would end past the allocation
/// assert!(matches!(d.checked(), Err(DescriptorError::Inconsistent(_))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedDescriptor(Descriptor);

impl std::ops::Deref for CheckedDescriptor {
    type Target = Descriptor;
    fn deref(&self) -> &Descriptor {
        &self.0
    }
}

impl CheckedDescriptor {
    /// Decodes and checks, as [`Descriptor::decode`].
    pub fn decode(bytes: &[u8]) -> Result<CheckedDescriptor, DescriptorError> {
        Descriptor::decode(bytes).map(CheckedDescriptor)
    }

    /// The descriptor inside (a copy, to edit and check again).
    pub fn descriptor(&self) -> Descriptor {
        self.0
    }
}

/// Why a descriptor was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// Fewer bytes than a descriptor has.
    #[error("descriptor truncated: {got} bytes, a descriptor of its version has {expected}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes a descriptor has.
        expected: usize,
    },
    /// More bytes than a descriptor has.
    #[error("descriptor too long: {got} bytes, a descriptor of its version has {expected}")]
    TooLong {
        /// Bytes received.
        got: usize,
        /// Bytes a descriptor has.
        expected: usize,
    },
    /// The bytes are not a cuda-ipc descriptor.
    #[error("not a cuda-ipc descriptor (bad magic {found:02x?}); is this the right file?")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// A descriptor of another format version.
    #[error(
        "descriptor format version {found} is not supported (this build reads versions \
         {VERSION} and {LAYOUT_VERSION}): use the same cuda-ipc version on both sides"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The checksum does not match: the bytes were corrupted or changed.
    #[error("descriptor checksum mismatch: the descriptor was corrupted (truncated, overwritten or damaged); publish it again")]
    ChecksumMismatch,
    /// An unknown transport number.
    #[error("unknown transport {0} in descriptor")]
    UnknownTransport(u32),
    /// The fields contradict each other.
    #[error("inconsistent descriptor: {0}")]
    Inconsistent(String),
    /// A tensor layout that is not well formed (an unknown data type, too many dimensions, an
    /// extent past 64 bits).
    #[error("invalid tensor layout: {0}")]
    InvalidLayout(String),
    /// The tensor layout differs from the one asked for.
    #[error("tensor layout mismatch: the buffer holds {found}, the importer asked for {expected}")]
    LayoutMismatch {
        /// The layout asked for.
        expected: String,
        /// The buffer's layout (`none` when it has none).
        found: String,
    },
    /// The element type differs from the one asked for.
    #[error(
        "element type mismatch: the buffer holds elements of {found_size} bytes (align \
         {found_align}, tag {found_tag:#018x}), the importer asked for {expected} ({expected_size} \
         bytes, align {expected_align}, tag {expected_tag:#018x})"
    )]
    TypeMismatch {
        /// The type asked for.
        expected: &'static str,
        /// Its size.
        expected_size: u32,
        /// Its alignment.
        expected_align: u32,
        /// Its tag.
        expected_tag: u64,
        /// The buffer's element size.
        found_size: u32,
        /// The buffer's element alignment.
        found_align: u32,
        /// The buffer's tag.
        found_tag: u64,
    },
    /// The element count differs from the one asked for.
    #[error("length mismatch: the buffer has {found} elements, the importer asked for {expected}")]
    LengthMismatch {
        /// Elements asked for.
        expected: u64,
        /// Elements the buffer has.
        found: u64,
    },
}

impl Descriptor {
    /// Encodes to the wire form, checksum included: 216 bytes (format version 1) without a
    /// layout, [`MAX_ENCODED_LEN`] (version 2) with one.
    pub fn encode(&self) -> Vec<u8> {
        let version = if self.layout.is_some() {
            LAYOUT_VERSION
        } else {
            VERSION
        };
        let raw = RawDescriptor {
            magic: MAGIC,
            version: version.to_le(),
            transport: (self.transport as u32).to_le(),
            elem_size: self.elem_size.to_le(),
            elem_align: self.elem_align.to_le(),
            type_tag: self.type_tag.to_le(),
            len: self.len.to_le(),
            byte_size: self.byte_size.to_le(),
            alloc_size: self.alloc_size.to_le(),
            offset: self.offset.to_le(),
            owner_uuid: self.owner_uuid,
            exporter_pid: self.exporter_pid.to_le(),
            exporter_uid: self.exporter_uid.to_le(),
            pid_namespace: self.pid_namespace.to_le(),
            boot_id: self.boot_id,
            buffer_id: self.buffer_id,
            generation: self.generation.to_le(),
            signal_offset: self.signal_offset.to_le(),
            handle: self.handle,
            checksum: 0,
        };
        let mut out = bytemuck::bytes_of(&raw)[..CHECKED_LEN].to_vec();
        if let Some(layout) = &self.layout {
            let mut wire = [0u8; LAYOUT_WIRE_LEN];
            layout.encode(&mut wire);
            out.extend_from_slice(&wire);
        }
        out.extend_from_slice(&[0; 8]);
        Self::reseal(&mut out);
        out
    }

    /// The fixed 216-byte form (format version 1), for records that embed a descriptor that
    /// never has a layout (a channel's pool). A layout, if any, is not written.
    pub(crate) fn encode_v1(&self) -> [u8; ENCODED_LEN] {
        let mut d = *self;
        d.layout = None;
        let mut out = [0u8; ENCODED_LEN];
        out.copy_from_slice(&d.encode());
        out
    }

    /// Recomputes the checksum (the last 8 bytes) of an encoded descriptor after its bytes
    /// were edited (for tools and tests that craft descriptors). Does nothing to fewer than 8
    /// bytes.
    pub fn reseal(bytes: &mut [u8]) {
        let Some(body) = bytes.len().checked_sub(8) else {
            return;
        };
        let sum = fnv1a(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
    }

    /// Decodes and checks: size, magic, version, checksum, transport, and that the fields agree
    /// with each other (and with the layout, for version 2). Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Descriptor, DescriptorError> {
        if bytes.len() < 12 {
            return Err(DescriptorError::Truncated {
                got: bytes.len(),
                expected: ENCODED_LEN,
            });
        }
        let magic: [u8; 8] = bytes[..8].try_into().expect("length checked");
        if magic != MAGIC {
            return Err(DescriptorError::BadMagic { found: magic });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("length checked"));
        let expected = match version {
            VERSION => ENCODED_LEN,
            LAYOUT_VERSION => MAX_ENCODED_LEN,
            found => return Err(DescriptorError::UnsupportedVersion { found }),
        };
        if bytes.len() < expected {
            return Err(DescriptorError::Truncated {
                got: bytes.len(),
                expected,
            });
        }
        if bytes.len() > expected {
            return Err(DescriptorError::TooLong {
                got: bytes.len(),
                expected,
            });
        }
        let body = expected - 8;
        let checksum = u64::from_le_bytes(bytes[body..].try_into().expect("length checked"));
        if fnv1a(&bytes[..body]) != checksum {
            return Err(DescriptorError::ChecksumMismatch);
        }
        let layout = match version {
            LAYOUT_VERSION => {
                let wire: &[u8; LAYOUT_WIRE_LEN] =
                    bytes[CHECKED_LEN..body].try_into().expect("length checked");
                Some(TensorLayout::decode(wire)?)
            }
            _ => None,
        };
        let mut fixed = [0u8; ENCODED_LEN];
        fixed[..CHECKED_LEN].copy_from_slice(&bytes[..CHECKED_LEN]);
        let bytes = &fixed[..];
        let raw: RawDescriptor = bytemuck::pod_read_unaligned(bytes);
        let transport = match u32::from_le(raw.transport) {
            1 => WireTransport::Legacy,
            2 => WireTransport::Fd,
            other => return Err(DescriptorError::UnknownTransport(other)),
        };
        let d = Descriptor {
            transport,
            elem_size: u32::from_le(raw.elem_size),
            elem_align: u32::from_le(raw.elem_align),
            type_tag: u64::from_le(raw.type_tag),
            len: u64::from_le(raw.len),
            byte_size: u64::from_le(raw.byte_size),
            alloc_size: u64::from_le(raw.alloc_size),
            offset: u64::from_le(raw.offset),
            owner_uuid: raw.owner_uuid,
            exporter_pid: u32::from_le(raw.exporter_pid),
            exporter_uid: u32::from_le(raw.exporter_uid),
            pid_namespace: u64::from_le(raw.pid_namespace),
            boot_id: raw.boot_id,
            buffer_id: raw.buffer_id,
            generation: u64::from_le(raw.generation),
            signal_offset: u64::from_le(raw.signal_offset),
            handle: raw.handle,
            layout,
        };
        d.check_consistency()?;
        Ok(d)
    }

    /// Checks that the fields agree with each other (what [`decode`](Self::decode) checks after
    /// the checksum) and returns the descriptor as a [`CheckedDescriptor`], the only form an
    /// import accepts. Use it on a descriptor you built or edited yourself.
    pub fn checked(&self) -> Result<CheckedDescriptor, DescriptorError> {
        self.check_consistency()?;
        Ok(CheckedDescriptor(*self))
    }

    fn check_consistency(&self) -> Result<(), DescriptorError> {
        let bad = |s: String| Err(DescriptorError::Inconsistent(s));
        if self.elem_align == 0 || !self.elem_align.is_power_of_two() {
            return bad(format!(
                "element alignment {} is not a power of two",
                self.elem_align
            ));
        }
        if self.elem_size != 0 && self.elem_size % self.elem_align != 0 {
            return bad(format!(
                "element size {} is not a multiple of its alignment {}",
                self.elem_size, self.elem_align
            ));
        }
        match self.len.checked_mul(self.elem_size as u64) {
            Some(b) if b == self.byte_size => {}
            _ => {
                return bad(format!(
                    "{} elements of {} bytes are not {} bytes",
                    self.len, self.elem_size, self.byte_size
                ))
            }
        }
        match self.offset.checked_add(self.byte_size) {
            Some(end) if end <= self.alloc_size => {}
            _ => {
                return bad(format!(
                    "offset {} + {} bytes lies beyond the allocation of {} bytes",
                    self.offset, self.byte_size, self.alloc_size
                ))
            }
        }
        if self.offset % self.elem_align as u64 != 0 {
            return bad(format!(
                "offset {} is not aligned to {}",
                self.offset, self.elem_align
            ));
        }
        if self.signal_offset != 0 {
            // `offset + byte_size` cannot overflow: checked above.
            let data_end = self.offset + self.byte_size;
            let fits = match self.signal_offset.checked_add(SIGNAL_WORDS_LEN) {
                Some(end) => {
                    end <= self.alloc_size && (end <= self.offset || self.signal_offset >= data_end)
                }
                None => false,
            };
            if !fits || self.signal_offset % 4 != 0 {
                return bad(format!(
                    "signal words at {} do not fit the allocation of {} bytes outside the data",
                    self.signal_offset, self.alloc_size
                ));
            }
        }
        if self.transport == WireTransport::Legacy && self.handle == [0; 64] {
            return bad("a legacy descriptor without a handle".into());
        }
        if self.buffer_id == [0; 16] {
            return bad("buffer id is zero".into());
        }
        if let Some(layout) = &self.layout {
            layout.check()?;
            if self.offset % layout.dtype().itemsize() != 0 {
                return bad(format!(
                    "offset {} is not aligned to the {}-byte elements of the tensor {layout}",
                    self.offset,
                    layout.dtype().itemsize()
                ));
            }
            if layout.extent_bytes() > self.byte_size {
                return bad(format!(
                    "the tensor {layout} spans {} bytes, the buffer has {}",
                    layout.extent_bytes(),
                    self.byte_size
                ));
            }
        }
        Ok(())
    }

    /// Checks that the buffer holds the tensor `expected` (data type, shape and strides).
    pub fn check_layout(&self, expected: &TensorLayout) -> Result<(), DescriptorError> {
        if self.layout.as_ref() != Some(expected) {
            return Err(DescriptorError::LayoutMismatch {
                expected: expected.to_string(),
                found: self
                    .layout
                    .map_or_else(|| "no tensor layout".to_string(), |l| l.to_string()),
            });
        }
        Ok(())
    }

    /// Checks that the buffer holds elements of `T` with `tag` (usually [`TypeTag::of::<T>()`]).
    pub fn check_type<T>(&self, tag: TypeTag) -> Result<(), DescriptorError> {
        let (size, align) = (
            std::mem::size_of::<T>() as u32,
            std::mem::align_of::<T>() as u32,
        );
        if size != self.elem_size || align != self.elem_align || tag.0 != self.type_tag {
            return Err(DescriptorError::TypeMismatch {
                expected: std::any::type_name::<T>(),
                expected_size: size,
                expected_align: align,
                expected_tag: tag.0,
                found_size: self.elem_size,
                found_align: self.elem_align,
                found_tag: self.type_tag,
            });
        }
        Ok(())
    }

    /// Checks the element count.
    pub fn check_len(&self, expected: u64) -> Result<(), DescriptorError> {
        if expected != self.len {
            return Err(DescriptorError::LengthMismatch {
                expected,
                found: self.len,
            });
        }
        Ok(())
    }

    /// A valid descriptor with made-up values, for examples and tests.
    pub fn example() -> Descriptor {
        Descriptor {
            transport: WireTransport::Legacy,
            elem_size: 4,
            elem_align: 4,
            type_tag: TypeTag::of::<u32>().0,
            len: 1024,
            byte_size: 4096,
            alloc_size: 8192,
            offset: 0,
            owner_uuid: [0x11; 16],
            exporter_pid: 4242,
            exporter_uid: 1000,
            pid_namespace: 4_026_531_836,
            boot_id: [0x22; 16],
            buffer_id: [0x33; 16],
            generation: 1,
            signal_offset: 4096,
            handle: [0x44; 64],
            layout: None,
        }
    }
}
