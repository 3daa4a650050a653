//! CPU tests of the driver-error layer, against the real driver library (no GPU needed).
//! The code table and the FFI layouts are checked by unit tests in src/result.rs and
//! src/sys.rs.

use cuda_ipc::error::{code_name, codes, DriverError};

#[test]
fn display_names_the_call_the_code_and_the_description() {
    let e = DriverError::new("cuIpcOpenMemHandle", codes::INVALID_CONTEXT);
    let text = e.to_string();
    assert!(text.starts_with("cuIpcOpenMemHandle failed with CUDA_ERROR_INVALID_CONTEXT (201)"));
    assert_eq!(e.description().as_deref(), Some("invalid device context"));
    assert!(text.ends_with(": invalid device context"), "{text}");
    assert_eq!(e.call(), "cuIpcOpenMemHandle");
    assert!(e.is(201));
}

#[test]
fn a_code_nobody_knows_still_renders() {
    let e = DriverError::new("cuMemMap", 123_456);
    assert_eq!(e.name(), "CUDA_ERROR_123456");
    assert!(e
        .to_string()
        .contains("cuMemMap failed with CUDA_ERROR_123456 (123456)"));
}

#[test]
fn no_device_code_maps_to_its_name() {
    assert_eq!(code_name(codes::NO_DEVICE), Some("CUDA_ERROR_NO_DEVICE"));
    assert_eq!(
        DriverError::new("cuInit", codes::NO_DEVICE).name(),
        "CUDA_ERROR_NO_DEVICE"
    );
}

#[test]
fn driver_error_converts_into_crate_error() {
    let e: cuda_ipc::Error = DriverError::new("cuMemAlloc", codes::OUT_OF_MEMORY).into();
    assert_eq!(e.driver_error().map(|d| d.code()), Some(2));
    assert!(e.to_string().contains("CUDA_ERROR_OUT_OF_MEMORY"));
}

#[test]
fn error_debug_is_the_variant_name_and_the_helpful_text() {
    use cuda_ipc::Error;
    let e = Error::NoSuchOrdinal {
        ordinal: 3,
        count: 2,
    };
    assert_eq!(
        format!("{e:?}"),
        format!("NoSuchOrdinal: {e}"),
        "Debug must show what Display shows"
    );
    assert!(format!("{e:?}").contains("GPU ordinal 3 does not exist"));
    // What `fn main() -> Result<()>` prints for a driver error.
    let e: Error = DriverError::new("cuMemAlloc", codes::OUT_OF_MEMORY).into();
    let debug = format!("{e:?}");
    assert!(
        debug.starts_with("Driver: cuMemAlloc failed with CUDA_ERROR_OUT_OF_MEMORY (2)"),
        "{debug}"
    );
    let e = Error::DriverNotFound {
        searched: "libcuda.so.1".into(),
        reason: "gone".into(),
    };
    assert_eq!(e.variant_name(), "DriverNotFound");
    assert_eq!(format!("{e:#?}"), format!("DriverNotFound: {e}"));
}
