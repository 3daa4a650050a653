//! The README's producer, as a new user's `main.rs`: allocate a shared buffer on GPU 0, fill
//! it, publish it, and wait until consumers are done. `.ci/run` builds and runs it without the
//! NVIDIA driver (it must print `Error: DriverNotFound: …` and exit with status 1) and with the
//! driver library but no GPU (`Error: NoDevice: …`).
use std::time::Duration;

use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join("cuda-ipc-dependent").join("frames");
    let ctx = Context::new(Device::by_ordinal(0)?)?;
    let stream = Stream::new(&ctx)?;
    let mut buf = SharedDeviceBuffer::<f32>::zeroed(&ctx, 1 << 20, Transport::Auto)?;
    ctx.kernels()?.fill_pattern(&stream, &mut buf, 42)?;
    stream.synchronize()?;
    let exporter = Exporter::bind(&dir, &buf)?; // publishes on a shared directory
    exporter.wait_released(Duration::from_secs(60))?; // all consumers are done
    println!("published {} floats at {}", buf.len(), dir.display());
    Ok(())
}
