//! GPU UUIDs: formatting like nvidia-smi and strict parsing.

use cuda_ipc::{Error, GpuUuid};

#[test]
fn formats_like_nvidia_smi() {
    let u = GpuUuid([
        0x4f, 0xfb, 0xfa, 0x91, 0x2c, 0x09, 0x6d, 0x3e, 0x81, 0x11, 0x3a, 0x42, 0x5b, 0x9c, 0x00,
        0xff,
    ]);
    assert_eq!(u.to_string(), "GPU-4ffbfa91-2c09-6d3e-8111-3a425b9c00ff");
}

#[test]
fn parses_what_it_prints_with_or_without_prefix() {
    let text = "GPU-4ffbfa91-2c09-6d3e-8111-3a425b9c00ff";
    let u: GpuUuid = text.parse().unwrap();
    assert_eq!(u.to_string(), text);
    assert_eq!(
        "4FFBFA91-2C09-6D3E-8111-3A425B9C00FF"
            .parse::<GpuUuid>()
            .unwrap(),
        u
    );
}

#[test]
fn rejects_malformed_uuids() {
    for bad in [
        "",
        "GPU-",
        "GPU-4ffbfa91-2c09-6d3e-8111-3a425b9c00f",
        "GPU-4ffbfa912c096d3e81113a425b9c00ff",
        "GPU-4ffbfa91-2c09-6d3e-8111-3a425b9c00fg",
        "GPU-4ffbfa91-2c09-6d3e-8111-3a425b9c00ff-00",
        "MIG-4ffbfa91-2c09-6d3e-8111-3a425b9c00ff",
        "GPU-4ffbfa91-2c09-6d3e-81é1-3a425b9c00f",
    ] {
        match bad.parse::<GpuUuid>() {
            Err(Error::BadUuid { input }) => assert_eq!(input, bad),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}
