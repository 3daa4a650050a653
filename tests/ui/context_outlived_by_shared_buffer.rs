// A shared (exported or imported) buffer cannot outlive its context.
use cuda_ipc::ipc::{SharedDeviceBuffer, Transport};
use cuda_ipc::{Context, Device};

fn main() -> Result<(), cuda_ipc::Error> {
    let buf = {
        let ctx = Context::new(Device::by_ordinal(0)?)?;
        SharedDeviceBuffer::<u32>::zeroed(&ctx, 16, Transport::Auto)?
    };
    drop(buf);
    Ok(())
}
