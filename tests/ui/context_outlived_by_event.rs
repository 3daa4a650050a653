// An event cannot outlive its context.
use cuda_ipc::{Context, Device, Event};

fn main() -> Result<(), cuda_ipc::Error> {
    let event = {
        let ctx = Context::new(Device::by_ordinal(0)?)?;
        Event::new(&ctx)?
    };
    drop(event);
    Ok(())
}
