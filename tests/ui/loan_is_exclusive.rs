// A loan borrows its publisher mutably: no second loan (or publisher drop) while it lives.
use std::time::Duration;
use cuda_ipc::pubsub::{ChannelOptions, Publisher};
use cuda_ipc::{Context, Device};

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let mut p = Publisher::<u32>::create(&ctx, "/tmp/x/frames", 16, ChannelOptions::default())?;
    let a = p.loan(Duration::from_secs(1))?;
    let b = p.loan(Duration::from_secs(1))?;
    println!("{} {}", a.seq(), b.seq());
    Ok(())
}
