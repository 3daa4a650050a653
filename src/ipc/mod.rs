//! Inter-process sharing of device memory.

mod descriptor;

pub use descriptor::DescriptorError;
