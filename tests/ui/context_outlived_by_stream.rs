// A stream cannot outlive its context.
use cuda_ipc::{Context, Device, Stream};

fn main() -> Result<(), cuda_ipc::Error> {
    let stream = {
        let ctx = Context::new(Device::by_ordinal(0)?)?;
        Stream::new(&ctx)?
    };
    drop(stream);
    Ok(())
}
