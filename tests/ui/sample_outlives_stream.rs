// A received frame is released on the stream it was received on: that stream must outlive it.
use std::time::Duration;
use cuda_ipc::pubsub::{SubscribeOptions, Subscriber};
use cuda_ipc::{Context, Device, Stream};

fn main() -> Result<(), cuda_ipc::Error> {
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let sub = Subscriber::<u32>::subscribe(&ctx, "/tmp/x/frames", SubscribeOptions::default())?;
    let stream = Stream::new(&ctx)?;
    let sample = sub.receive(&stream, Duration::from_secs(1))?;
    drop(stream);
    println!("{}", sample.seq());
    Ok(())
}
