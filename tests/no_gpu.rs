//! The no-GPU path through the real driver library. Hiding every GPU with
//! `CUDA_VISIBLE_DEVICES=""` makes cuInit return CUDA_ERROR_NO_DEVICE on any machine, with or
//! without GPUs, so this test means the same thing everywhere. It is the only test in this
//! binary because the variable must be set before the driver is initialised.

use cuda_ipc::{Context, Device, Error};

#[test]
fn no_visible_gpu_gives_no_device_with_a_helpful_message() {
    // Set before any driver call in this process; this binary has one test, one thread.
    std::env::set_var("CUDA_VISIBLE_DEVICES", "");

    let err = Device::count().expect_err("no GPU may be visible");
    let Error::NoDevice { visibility } = &err else {
        panic!("expected Error::NoDevice, got {err:?}");
    };
    assert!(
        visibility.contains("CUDA_VISIBLE_DEVICES=\"\""),
        "{visibility}"
    );
    let text = err.to_string();
    assert!(text.contains("CUDA_ERROR_NO_DEVICE"), "{text}");
    assert!(text.contains("nvidia-smi"), "{text}");
    // `fn main() -> Result<()>` prints Debug: the same helpful text, after the variant's name.
    assert_eq!(format!("{err:?}"), format!("NoDevice: {text}"));

    // Every entry point that needs a GPU says the same, and none panics.
    assert!(matches!(Device::all(), Err(Error::NoDevice { .. })));
    assert!(matches!(Device::by_ordinal(0), Err(Error::NoDevice { .. })));
    let uuid: cuda_ipc::GpuUuid = "GPU-00000000-0000-0000-0000-000000000000".parse().unwrap();
    assert!(matches!(
        Device::by_uuid(&uuid),
        Err(Error::NoDevice { .. })
    ));

    // The driver version needs no device.
    let (major, _minor) = cuda_ipc::device::driver_version().expect("cuDriverGetVersion");
    assert!(major >= 11, "driver major version {major}");
    let _ = std::any::type_name::<Context>();
}
