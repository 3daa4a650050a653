// An offer's lease cannot be separated from its fd: its fields are private.
use cuda_ipc::ipc::{fetch, ImportOptions};

fn main() -> Result<(), cuda_ipc::Error> {
    let offer = fetch::<u32>("/tmp/x/frames", &ImportOptions::default())?;
    let _fd = offer.fd;
    Ok(())
}
