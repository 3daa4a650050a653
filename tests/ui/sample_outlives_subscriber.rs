// A received frame borrows its subscriber: it cannot be used after the subscriber (and its
// mapping of the pool) is gone.
use std::time::Duration;
use cuda_ipc::pubsub::{SubscribeOptions, Subscriber};
use cuda_ipc::{Context, Device, Stream};

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let stream = Stream::new(&ctx)?;
    let sub = Subscriber::<u32>::subscribe(&ctx, "/tmp/x/frames", SubscribeOptions::default())?;
    let sample = sub.receive(&stream, Duration::from_secs(1))?;
    drop(sub);
    println!("{}", sample.seq());
    Ok(())
}
