// A buffer of u32 is not a buffer of f32: reinterpreting takes an explicit, checked cast.
use cuda_ipc::ipc::{SharedDeviceBuffer, Transport};
use cuda_ipc::{Context, Device};

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let words = SharedDeviceBuffer::<u32>::zeroed(&ctx, 16, Transport::Auto)?;
    let _floats: SharedDeviceBuffer<f32> = words;
    Ok(())
}
