//! The descriptor: round trip and every rejection, on crafted and random bytes.

use cuda_ipc::ipc::{Descriptor, DescriptorError, TypeTag, WireTransport, DESCRIPTOR_LEN};

fn sample() -> Descriptor {
    let mut d = Descriptor::example();
    d.transport = WireTransport::Fd;
    d.handle = [0; 64];
    d.alloc_size = 2 << 20;
    d
}

#[test]
fn round_trips_both_transports() {
    for d in [Descriptor::example(), sample()] {
        let bytes = d.encode();
        assert_eq!(bytes.len(), DESCRIPTOR_LEN);
        assert_eq!(&bytes[..8], b"CUDAIPC\0");
        assert_eq!(Descriptor::decode(&bytes), Ok(d));
    }
}

#[test]
fn is_little_endian_on_the_wire() {
    let d = sample();
    let bytes = d.encode();
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        1,
        "version"
    );
    assert_eq!(
        u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        2,
        "transport fd"
    );
    assert_eq!(u64::from_le_bytes(bytes[32..40].try_into().unwrap()), d.len);
}

#[test]
fn every_flipped_byte_is_rejected() {
    let good = sample().encode();
    for i in 0..DESCRIPTOR_LEN {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            let err = Descriptor::decode(&b).expect_err(&format!("flip of byte {i}"));
            match i {
                0..=7 => assert!(
                    matches!(err, DescriptorError::BadMagic { .. }),
                    "{i}: {err}"
                ),
                8..=11 => assert!(
                    matches!(err, DescriptorError::UnsupportedVersion { .. }),
                    "{i}: {err}"
                ),
                _ => assert_eq!(err, DescriptorError::ChecksumMismatch, "byte {i}"),
            }
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let good = sample().encode();
    for len in 0..DESCRIPTOR_LEN {
        match Descriptor::decode(&good[..len]) {
            Err(DescriptorError::Truncated { got, expected }) => {
                assert_eq!((got, expected), (len, DESCRIPTOR_LEN))
            }
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn oversized_and_empty_inputs_are_rejected() {
    let mut long = sample().encode().to_vec();
    long.push(0);
    assert!(matches!(
        Descriptor::decode(&long),
        Err(DescriptorError::TooLong { got, .. }) if got == DESCRIPTOR_LEN + 1
    ));
    assert!(matches!(
        Descriptor::decode(&[]),
        Err(DescriptorError::Truncated { got: 0, .. })
    ));
    assert!(matches!(
        Descriptor::decode(&vec![0u8; 1 << 16]),
        Err(DescriptorError::BadMagic { .. })
    ));
}

#[test]
fn future_version_is_named() {
    let mut b = sample().encode();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    Descriptor::reseal(&mut b);
    let err = Descriptor::decode(&b).unwrap_err();
    assert_eq!(err, DescriptorError::UnsupportedVersion { found: 3 });
    assert!(err.to_string().contains("same cuda-ipc version"));
}

#[test]
fn unknown_transport_is_named() {
    let mut b = sample().encode();
    b[12..16].copy_from_slice(&7u32.to_le_bytes());
    Descriptor::reseal(&mut b);
    assert_eq!(
        Descriptor::decode(&b),
        Err(DescriptorError::UnknownTransport(7))
    );
}

fn resealed(edit: impl Fn(&mut Descriptor)) -> Result<Descriptor, DescriptorError> {
    let mut d = sample();
    edit(&mut d);
    Descriptor::decode(&d.encode())
}

#[test]
fn inconsistent_fields_are_rejected() {
    type Edit = Box<dyn Fn(&mut Descriptor)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("byte size", Box::new(|d| d.byte_size += 1)),
        ("beyond allocation", Box::new(|d| d.offset = d.alloc_size)),
        (
            "alloc too small",
            Box::new(|d| d.alloc_size = d.byte_size - 4),
        ),
        ("align zero", Box::new(|d| d.elem_align = 0)),
        ("align not power of two", Box::new(|d| d.elem_align = 3)),
        (
            "size vs align",
            Box::new(|d| {
                d.elem_size = 6;
                d.byte_size = d.len * 6;
            }),
        ),
        (
            "len overflow",
            Box::new(|d| {
                d.len = u64::MAX;
            }),
        ),
        ("offset overflow", Box::new(|d| d.offset = u64::MAX - 8)),
        (
            "signal beyond",
            Box::new(|d| d.signal_offset = d.alloc_size - 4),
        ),
        ("signal in data", Box::new(|d| d.signal_offset = 8)),
        ("zero buffer id", Box::new(|d| d.buffer_id = [0; 16])),
        (
            "legacy without handle",
            Box::new(|d| d.transport = WireTransport::Legacy),
        ),
    ];
    for (what, edit) in cases {
        match resealed(edit) {
            Err(DescriptorError::Inconsistent(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn type_and_length_mismatches_are_distinct() {
    let d = sample(); // u32 elements, 1024 of them
    assert_eq!(d.check_type::<u32>(TypeTag::of::<u32>()), Ok(()));
    for (err, name) in [
        (
            d.check_type::<f32>(TypeTag::of::<f32>()).unwrap_err(),
            "f32",
        ),
        (
            d.check_type::<u64>(TypeTag::of::<u64>()).unwrap_err(),
            "u64",
        ),
        (
            d.check_type::<u32>(TypeTag::named("other")).unwrap_err(),
            "u32",
        ),
    ] {
        assert!(
            matches!(err, DescriptorError::TypeMismatch { .. }),
            "{name}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
    assert_eq!(d.check_len(1024), Ok(()));
    assert_eq!(
        d.check_len(1000),
        Err(DescriptorError::LengthMismatch {
            expected: 1000,
            found: 1024
        })
    );
}

#[test]
fn type_tags_differ_between_types_and_are_stable() {
    assert_ne!(TypeTag::of::<u32>(), TypeTag::of::<f32>());
    assert_ne!(TypeTag::of::<[u8; 4]>(), TypeTag::of::<u32>());
    assert_eq!(TypeTag::named("frame/v1"), TypeTag::named("frame/v1"));
    // FNV-1a 64 of "a", a published test vector.
    assert_eq!(TypeTag::named("a").0, 0xaf63_dc4c_8601_ec8c);
}

/// xorshift64*: deterministic random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_bytes_and_random_flips_never_panic_or_pass() {
    let good = sample().encode();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for case in 0..20_000 {
        // Random bytes of random length, some with the right magic and version.
        let len = (rng.next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if case % 2 == 0 && len >= 12 {
            bytes[..12].copy_from_slice(&good[..12]);
        }
        assert!(Descriptor::decode(&bytes).is_err(), "case {case}");

        // 1 to 8 random bit flips of a valid descriptor.
        let mut flipped = good.clone();
        for _ in 0..=(rng.next() % 8) {
            let bit = rng.next() as usize % (DESCRIPTOR_LEN * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        if flipped != good {
            assert!(Descriptor::decode(&flipped).is_err(), "case {case}");
        }
    }
}

/// A crafted descriptor whose signal words sit at the very top of the address space: checking
/// it must not overflow (it panicked in debug builds: `signal_offset + 8`).
#[test]
fn signal_words_at_the_top_of_the_address_space_are_refused_without_panicking() {
    let mut d = sample();
    d.elem_size = 4;
    d.elem_align = 4;
    d.len = 1;
    d.byte_size = 4;
    d.offset = u64::MAX - 7;
    d.alloc_size = u64::MAX;
    d.signal_offset = u64::MAX - 7;
    let bytes = d.encode();
    let err = Descriptor::decode(&bytes).expect_err("signal words overflow");
    assert!(matches!(err, DescriptorError::Inconsistent(_)), "{err}");
    assert!(d.checked().is_err());
}

/// A descriptor built or edited by the caller becomes importable only through `checked()`.
#[test]
fn only_checked_descriptors_are_importable() {
    let mut d = sample();
    assert_eq!(*d.checked().unwrap(), d);
    d.byte_size += 4; // len * elem_size no longer matches
    assert!(matches!(d.checked(), Err(DescriptorError::Inconsistent(_))));
    let mut d = sample();
    d.offset = 2; // misaligned for u32
    d.alloc_size = 1 << 30;
    assert!(d.checked().is_err());
}

/// A version-2 descriptor: a byte buffer holding a float32 tensor of 4 x 256.
fn with_layout() -> Descriptor {
    use cuda_ipc::ipc::{DType, TensorLayout};
    let mut d = sample();
    let layout = TensorLayout::contiguous(DType::F32, &[4, 256]).unwrap();
    d.elem_size = 1;
    d.elem_align = 1;
    d.len = layout.extent_bytes();
    d.byte_size = d.len;
    d.signal_offset = d.byte_size;
    d.layout = Some(layout);
    d
}

#[test]
fn a_layout_round_trips_as_version_2_and_every_flipped_byte_is_rejected() {
    use cuda_ipc::ipc::{DESCRIPTOR_LAYOUT_VERSION, MAX_DESCRIPTOR_LEN};
    let d = with_layout();
    let good = d.encode();
    assert_eq!(good.len(), MAX_DESCRIPTOR_LEN);
    assert_eq!(
        u32::from_le_bytes(good[8..12].try_into().unwrap()),
        DESCRIPTOR_LAYOUT_VERSION
    );
    assert_eq!(Descriptor::decode(&good), Ok(d));
    for i in 12..MAX_DESCRIPTOR_LEN {
        let mut b = good.clone();
        b[i] ^= 0x10;
        assert_eq!(
            Descriptor::decode(&b),
            Err(DescriptorError::ChecksumMismatch),
            "byte {i}"
        );
    }
    // A version-1 length under the version-2 number, and the reverse.
    let mut short = good[..DESCRIPTOR_LEN].to_vec();
    Descriptor::reseal(&mut short);
    assert!(matches!(
        Descriptor::decode(&short),
        Err(DescriptorError::Truncated { expected, .. }) if expected == MAX_DESCRIPTOR_LEN
    ));
    let mut long = sample().encode();
    long.resize(MAX_DESCRIPTOR_LEN, 0);
    Descriptor::reseal(&mut long);
    assert!(matches!(
        Descriptor::decode(&long),
        Err(DescriptorError::TooLong { .. })
    ));
}

#[test]
fn a_layout_past_the_bytes_or_malformed_is_refused_even_when_resealed() {
    use cuda_ipc::ipc::{DType, TensorLayout};
    // A hostile exporter claims a bigger tensor than the bytes it shares.
    let mut d = with_layout();
    d.layout = Some(TensorLayout::contiguous(DType::F32, &[4, 257]).unwrap());
    assert!(matches!(
        Descriptor::decode(&d.encode()),
        Err(DescriptorError::Inconsistent(m)) if m.contains("spans")
    ));
    // Strides that reach past the end, though the element count fits.
    d.layout = Some(TensorLayout::strided(DType::F32, &[4, 256], &[512, 1]).unwrap());
    assert!(Descriptor::decode(&d.encode()).is_err());
    // A float32 tensor at an odd offset: misaligned element pointers (a sticky GPU fault).
    let mut d = with_layout();
    d.offset = 2;
    d.signal_offset = 0;
    assert!(matches!(
        Descriptor::decode(&d.encode()),
        Err(DescriptorError::Inconsistent(m)) if m.contains("not aligned to the 4-byte elements")
    ));
    // Raw edits of the layout block: a data type code 3 (opaque), 9 dimensions.
    let good = with_layout().encode();
    for (at, value) in [(DESCRIPTOR_LEN - 8, 3u8), (DESCRIPTOR_LEN - 8 + 4, 9)] {
        let mut b = good.clone();
        b[at] = value;
        Descriptor::reseal(&mut b);
        assert!(
            matches!(
                Descriptor::decode(&b),
                Err(DescriptorError::InvalidLayout(_))
            ),
            "byte {at} = {value}"
        );
    }
}

#[test]
fn check_layout_names_both_layouts() {
    use cuda_ipc::ipc::{DType, TensorLayout};
    let d = with_layout();
    d.check_layout(&TensorLayout::contiguous(DType::F32, &[4, 256]).unwrap())
        .unwrap();
    let err = d
        .check_layout(&TensorLayout::contiguous(DType::F16, &[4, 256]).unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor layout mismatch: the buffer holds float32[4, 256], the importer asked for \
         float16[4, 256]"
    );
    let err = sample()
        .check_layout(&TensorLayout::contiguous(DType::F32, &[1]).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("no tensor layout"), "{err}");
}
