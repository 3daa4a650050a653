//! Tensor layouts: the element type, shape and strides of a shared buffer, carried in its
//! descriptor so that a consumer in another language (PyTorch, CuPy) sees the same tensor.
//!
//! A buffer shared with a layout is a byte buffer (`SharedDeviceBuffer<u8>`) tagged
//! [`TENSOR_TYPE_TAG`] whose descriptor (format version 2) carries a [`TensorLayout`]: a DLPack
//! data type, up to [`MAX_DIMS`] dimensions and their strides in elements. Every decode checks
//! that the layout is well formed and that every element it addresses lies inside the shared
//! bytes, so a view built from a peer's layout never reaches past the mapping.
//!
//! ```
//! use cuda_ipc::ipc::{DType, Descriptor, TensorLayout};
//! let layout = TensorLayout::contiguous(DType::F32, &[4, 768])?;
//! assert_eq!(layout.strides(), &[768, 1]);
//! assert_eq!(layout.extent_bytes(), 4 * 768 * 4);
//!
//! let mut d = Descriptor::example();
//! d.elem_size = 1;
//! d.elem_align = 1;
//! d.len = layout.extent_bytes();
//! d.byte_size = d.len;
//! d.alloc_size = 16384;
//! d.signal_offset = 0;
//! d.layout = Some(layout);
//! let back = Descriptor::decode(&d.encode())?;
//! assert_eq!(back.layout, Some(layout));
//! # Ok::<(), cuda_ipc::ipc::DescriptorError>(())
//! ```

use super::descriptor::DescriptorError;

/// The type tag (see [`TypeTag::named`](super::TypeTag::named)) of byte buffers that carry a
/// [`TensorLayout`]: what the Python package writes and expects.
pub const TENSOR_TYPE_TAG: &str = "cuda-ipc/tensor/v1";

/// Most dimensions a [`TensorLayout`] has.
pub const MAX_DIMS: usize = 8;

/// A DLPack data type (`DLDataType`): a type code, bits per lane and lanes (always 1 here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType {
    /// `DLDataTypeCode`: 0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool.
    pub code: u8,
    /// Bits per element: 8, 16, 32, 64 (128 for complex).
    pub bits: u8,
    /// Vector lanes: 1.
    pub lanes: u16,
}

impl DType {
    /// `bool` (one byte).
    pub const BOOL: DType = DType::new(6, 8);
    /// `int8`.
    pub const I8: DType = DType::new(0, 8);
    /// `int16`.
    pub const I16: DType = DType::new(0, 16);
    /// `int32`.
    pub const I32: DType = DType::new(0, 32);
    /// `int64`.
    pub const I64: DType = DType::new(0, 64);
    /// `uint8`.
    pub const U8: DType = DType::new(1, 8);
    /// `uint16`.
    pub const U16: DType = DType::new(1, 16);
    /// `uint32`.
    pub const U32: DType = DType::new(1, 32);
    /// `uint64`.
    pub const U64: DType = DType::new(1, 64);
    /// `float16`.
    pub const F16: DType = DType::new(2, 16);
    /// `float32`.
    pub const F32: DType = DType::new(2, 32);
    /// `float64`.
    pub const F64: DType = DType::new(2, 64);
    /// `bfloat16`.
    pub const BF16: DType = DType::new(4, 16);
    /// `complex64`.
    pub const C64: DType = DType::new(5, 64);
    /// `complex128`.
    pub const C128: DType = DType::new(5, 128);

    const ALL: [(DType, &'static str); 15] = [
        (DType::BOOL, "bool"),
        (DType::I8, "int8"),
        (DType::I16, "int16"),
        (DType::I32, "int32"),
        (DType::I64, "int64"),
        (DType::U8, "uint8"),
        (DType::U16, "uint16"),
        (DType::U32, "uint32"),
        (DType::U64, "uint64"),
        (DType::F16, "float16"),
        (DType::F32, "float32"),
        (DType::F64, "float64"),
        (DType::BF16, "bfloat16"),
        (DType::C64, "complex64"),
        (DType::C128, "complex128"),
    ];

    const fn new(code: u8, bits: u8) -> DType {
        DType {
            code,
            bits,
            lanes: 1,
        }
    }

    /// The type named `name` (`"float32"`, `"bfloat16"`, ...: NumPy's and PyTorch's names).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// Its name (`"float32"`), or `None` for a type this crate does not know.
    pub fn name(self) -> Option<&'static str> {
        DType::ALL.iter().find(|(d, _)| *d == self).map(|(_, n)| *n)
    }

    /// Bytes per element.
    pub fn itemsize(self) -> u64 {
        u64::from(self.bits) / 8 * u64::from(self.lanes)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(
                f,
                "dtype(code {}, bits {}, lanes {})",
                self.code, self.bits, self.lanes
            ),
        }
    }
}

/// The element type, shape and strides (in elements, C order by default) of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorLayout {
    dtype: DType,
    ndim: u8,
    shape: [u64; MAX_DIMS],
    strides: [u64; MAX_DIMS],
}

impl TensorLayout {
    /// A C-contiguous (row-major) layout.
    pub fn contiguous(dtype: DType, shape: &[u64]) -> Result<TensorLayout, DescriptorError> {
        if shape.len() > MAX_DIMS {
            return Err(invalid(format!(
                "{} dimensions, at most {MAX_DIMS} are supported",
                shape.len()
            )));
        }
        let mut strides = [0u64; MAX_DIMS];
        let mut step = 1u64;
        for i in (0..shape.len()).rev() {
            strides[i] = step;
            step = step.checked_mul(shape[i].max(1)).ok_or_else(|| {
                invalid(format!(
                    "shape {shape:?} has more elements than fit 64 bits"
                ))
            })?;
        }
        Self::strided(dtype, shape, &strides[..shape.len()])
    }

    /// A layout with explicit strides, in elements (not bytes; non-negative).
    pub fn strided(
        dtype: DType,
        shape: &[u64],
        strides: &[u64],
    ) -> Result<TensorLayout, DescriptorError> {
        if shape.len() > MAX_DIMS {
            return Err(invalid(format!(
                "{} dimensions, at most {MAX_DIMS} are supported",
                shape.len()
            )));
        }
        if strides.len() != shape.len() {
            return Err(invalid(format!(
                "{} strides for {} dimensions",
                strides.len(),
                shape.len()
            )));
        }
        let mut layout = TensorLayout {
            dtype,
            ndim: shape.len() as u8,
            shape: [0; MAX_DIMS],
            strides: [0; MAX_DIMS],
        };
        layout.shape[..shape.len()].copy_from_slice(shape);
        layout.strides[..shape.len()].copy_from_slice(strides);
        layout.check()?;
        Ok(layout)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape[..self.ndim as usize]
    }

    /// The strides, in elements.
    pub fn strides(&self) -> &[u64] {
        &self.strides[..self.ndim as usize]
    }

    /// Elements (the product of the shape).
    pub fn numel(&self) -> u64 {
        // `check` proved that the product fits.
        self.shape().iter().product()
    }

    /// Bytes from the first element to the end of the last one it addresses: what the buffer
    /// must hold (0 for an empty tensor).
    pub fn extent_bytes(&self) -> u64 {
        self.extent().expect("checked when the layout was made")
    }

    /// Whether the strides are the C-contiguous ones.
    pub fn is_contiguous(&self) -> bool {
        TensorLayout::contiguous(self.dtype, self.shape())
            .is_ok_and(|c| c.strides() == self.strides() || self.numel() <= 1)
    }

    fn extent(&self) -> Option<u64> {
        if self.shape().contains(&0) {
            return Some(0);
        }
        let mut last = 0u64;
        for (&n, &s) in self.shape().iter().zip(self.strides()) {
            last = last.checked_add((n - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)?.checked_mul(self.dtype.itemsize())
    }

    /// Well formed: a known data type, at most [`MAX_DIMS`] dimensions, unused dimensions
    /// zero, and an extent that fits 64 bits.
    pub(crate) fn check(&self) -> Result<(), DescriptorError> {
        if self.dtype.name().is_none() {
            return Err(invalid(format!("unsupported element type {}", self.dtype)));
        }
        let n = self.ndim as usize;
        if n > MAX_DIMS {
            return Err(invalid(format!(
                "{n} dimensions, at most {MAX_DIMS} are supported"
            )));
        }
        if self.shape[n..]
            .iter()
            .chain(&self.strides[n..])
            .any(|&x| x != 0)
        {
            return Err(invalid("values past the last dimension".into()));
        }
        // Every value must be usable as a signed 64-bit count of elements and of bytes
        // (DLPack's and the CUDA Array Interface's types), even where it does not change the
        // extent (a stride of a dimension of size 1, any value beside a dimension of size 0).
        let limit = i64::MAX as u64 / self.dtype.itemsize().max(1);
        if let Some(v) = self
            .shape()
            .iter()
            .chain(self.strides())
            .find(|&&v| v > limit)
        {
            return Err(invalid(format!(
                "shape {:?} with strides {:?}: {v} elements of {} bytes do not fit a signed \
                 64-bit byte count",
                self.shape(),
                self.strides(),
                self.dtype.itemsize()
            )));
        }
        let numel = self.shape().iter().try_fold(1u64, |a, &b| a.checked_mul(b));
        if numel.is_none() || self.extent().is_none() {
            return Err(invalid(format!(
                "shape {:?} with strides {:?} addresses more bytes than fit 64 bits",
                self.shape(),
                self.strides()
            )));
        }
        Ok(())
    }

    /// The wire form: code, bits, lanes, ndim, then the shape and the strides, little-endian.
    pub(crate) fn encode(&self, out: &mut [u8; LAYOUT_WIRE_LEN]) {
        out[0] = self.dtype.code;
        out[1] = self.dtype.bits;
        out[2..4].copy_from_slice(&self.dtype.lanes.to_le_bytes());
        out[4..8].copy_from_slice(&u32::from(self.ndim).to_le_bytes());
        for i in 0..MAX_DIMS {
            let at = 8 + 8 * i;
            out[at..at + 8].copy_from_slice(&self.shape[i].to_le_bytes());
            let at = 8 + 8 * MAX_DIMS + 8 * i;
            out[at..at + 8].copy_from_slice(&self.strides[i].to_le_bytes());
        }
    }

    /// Reads the wire form and checks it.
    pub(crate) fn decode(b: &[u8; LAYOUT_WIRE_LEN]) -> Result<TensorLayout, DescriptorError> {
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let ndim = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        if ndim as usize > MAX_DIMS {
            return Err(invalid(format!(
                "{ndim} dimensions, at most {MAX_DIMS} are supported"
            )));
        }
        let mut layout = TensorLayout {
            dtype: DType {
                code: b[0],
                bits: b[1],
                lanes: u16::from_le_bytes([b[2], b[3]]),
            },
            ndim: ndim as u8,
            shape: [0; MAX_DIMS],
            strides: [0; MAX_DIMS],
        };
        for i in 0..MAX_DIMS {
            layout.shape[i] = word(8 + 8 * i);
            layout.strides[i] = word(8 + 8 * MAX_DIMS + 8 * i);
        }
        layout.check()?;
        Ok(layout)
    }
}

impl std::fmt::Display for TensorLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape())?;
        if !self.is_contiguous() {
            write!(f, " strides {:?}", self.strides())?;
        }
        Ok(())
    }
}

/// Bytes of a layout on the wire.
pub(crate) const LAYOUT_WIRE_LEN: usize = 8 + 16 * MAX_DIMS;

fn invalid(why: String) -> DescriptorError {
    DescriptorError::InvalidLayout(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_strides_and_extent() {
        let l = TensorLayout::contiguous(DType::BF16, &[2, 3, 4]).unwrap();
        assert_eq!(l.strides(), &[12, 4, 1]);
        assert_eq!(l.numel(), 24);
        assert_eq!(l.extent_bytes(), 48);
        assert!(l.is_contiguous());
        assert_eq!(l.to_string(), "bfloat16[2, 3, 4]");
        let scalar = TensorLayout::contiguous(DType::F64, &[]).unwrap();
        assert_eq!((scalar.numel(), scalar.extent_bytes()), (1, 8));
        let empty = TensorLayout::contiguous(DType::F32, &[3, 0]).unwrap();
        assert_eq!(empty.extent_bytes(), 0);
    }

    #[test]
    fn strided_extent_counts_the_last_element_addressed() {
        // A transposed 3x4 float32: strides (1, 3).
        let t = TensorLayout::strided(DType::F32, &[4, 3], &[1, 4]).unwrap();
        assert_eq!(t.extent_bytes(), (3 + 2 * 4 + 1) * 4);
        assert!(!t.is_contiguous());
    }

    #[test]
    fn wire_round_trip_and_rejections() {
        let l = TensorLayout::strided(DType::I16, &[5, 7], &[8, 1]).unwrap();
        let mut w = [0u8; LAYOUT_WIRE_LEN];
        l.encode(&mut w);
        assert_eq!(TensorLayout::decode(&w).unwrap(), l);
        let mut bad = w;
        bad[4] = 9; // ndim 9
        assert!(matches!(
            TensorLayout::decode(&bad),
            Err(DescriptorError::InvalidLayout(_))
        ));
        let mut bad = w;
        bad[0] = 3; // opaque handle: not a data type
        assert!(TensorLayout::decode(&bad).is_err());
        let mut bad = w;
        bad[8 + 8 * 5] = 1; // a shape value past ndim
        assert!(TensorLayout::decode(&bad).is_err());
        let mut bad = w;
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // extent overflows
        assert!(TensorLayout::decode(&bad).is_err());
        assert!(TensorLayout::contiguous(DType::U8, &[1; 9]).is_err());
        assert!(TensorLayout::contiguous(DType::U8, &[1 << 40, 1 << 40]).is_err());
        assert!(TensorLayout::strided(DType::U8, &[2], &[1, 1]).is_err());
        // Values that do not change the extent are bounded too (a stride of a size-1
        // dimension, anything beside a size-0 one).
        assert!(TensorLayout::strided(DType::F32, &[1, 2], &[u64::MAX, 1]).is_err());
        assert!(TensorLayout::strided(DType::F32, &[1, 2], &[1 << 62, 1]).is_err());
        assert!(TensorLayout::contiguous(DType::F32, &[0, u64::MAX]).is_err());
        assert!(TensorLayout::strided(DType::F32, &[1, 2], &[1 << 40, 1]).is_ok());
    }

    #[test]
    fn names_round_trip() {
        for (d, n) in DType::ALL {
            assert_eq!(DType::from_name(n), Some(d));
            assert_eq!(d.to_string(), n);
        }
        assert_eq!(DType::from_name("float128"), None);
    }
}
