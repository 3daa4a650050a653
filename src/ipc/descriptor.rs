//! The shared descriptor.

/// Why a descriptor was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// Fewer bytes than a descriptor has.
    #[error("descriptor truncated: {got} bytes, expected {expected}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes a descriptor has.
        expected: usize,
    },
}
