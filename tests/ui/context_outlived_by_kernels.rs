// The kernels of a context cannot outlive it.
use cuda_ipc::{Context, Device};

fn main() -> Result<(), cuda_ipc::Error> {
    let kernels = {
        let ctx = Context::new(Device::by_ordinal(0)?)?;
        ctx.kernels()?
    };
    let _ = kernels;
    Ok(())
}
