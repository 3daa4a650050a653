// A view cannot outlive the buffer it borrows.
use cuda_ipc::prelude::*;

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let buf = DeviceBuffer::<u32>::zeroed(&ctx, 16)?;
    let view = buf.view();
    drop(buf);
    let _ = view.len();
    Ok(())
}
