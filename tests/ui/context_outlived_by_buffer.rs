// A device buffer cannot outlive its context.
use cuda_ipc::{Context, Device, DeviceBuffer};

fn main() -> Result<(), cuda_ipc::Error> {
    let buf = {
        let ctx = Context::new(Device::by_ordinal(0)?)?;
        DeviceBuffer::<u32>::zeroed(&ctx, 16)?
    };
    drop(buf);
    Ok(())
}
