// The guard of Context::bind is per thread: it cannot be sent to another thread.
use cuda_ipc::{Context, Device};

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx: &'static Context = Context::primary(Device::by_ordinal(0)?)?;
    let bound = ctx.bind()?;
    std::thread::spawn(move || drop(bound));
    Ok(())
}
