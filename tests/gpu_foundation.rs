//! GPU tests of the foundation: enumeration, memory, kernels, several GPUs in one process.
//! Run with `cargo test -- --include-ignored` on a machine with NVIDIA GPUs (two for the
//! multi-GPU test), or through the GPU bundle (scripts/gpu-bundle.sh).

use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

fn devices() -> Vec<Device> {
    let all = Device::all().expect("enumerating GPUs");
    assert!(!all.is_empty(), "no GPU visible");
    all
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn enumerates_every_device_with_sane_fields() {
    let all = devices();
    println!("Found {} GPU(s)", all.len());
    let mut uuids = std::collections::HashSet::new();
    for d in &all {
        let info = d.info().unwrap();
        println!(
            "GPU {}: {} {} pci {} mem {} MiB sm_{}{} SMs {} uva {} vmm {} posix-fd {}",
            info.ordinal,
            info.name,
            info.uuid,
            info.pci_bus_id,
            info.total_memory >> 20,
            info.compute_capability.0,
            info.compute_capability.1,
            info.multiprocessor_count,
            info.unified_addressing,
            info.vmm_supported,
            info.posix_fd_supported
        );
        assert!(!info.name.is_empty());
        assert_ne!(info.uuid, GpuUuid::default());
        assert!(uuids.insert(info.uuid), "duplicate UUID {}", info.uuid);
        assert_eq!(
            info.pci_bus_id.matches(':').count(),
            2,
            "{}",
            info.pci_bus_id
        );
        assert!(info.total_memory > 1 << 30);
        assert!(info.compute_capability.0 >= 7);
        assert!(info.multiprocessor_count > 0);
        assert!(info.unified_addressing);
        // The UUID finds the same device; its string form parses back.
        let parsed: GpuUuid = info.uuid.to_string().parse().unwrap();
        assert_eq!(Device::by_uuid(&parsed).unwrap(), *d);
    }
    let count = all.len();
    assert!(matches!(
        Device::by_ordinal(count),
        Err(Error::NoSuchOrdinal { ordinal, count: c }) if ordinal == count && c == count
    ));
    let absent: GpuUuid = "GPU-00000000-0000-0000-0000-000000000001".parse().unwrap();
    assert!(matches!(
        Device::by_uuid(&absent),
        Err(Error::DeviceNotFound { .. })
    ));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn prints_the_peer_access_matrix() {
    let all = devices();
    println!("peer access (row can access column):");
    for a in &all {
        let row: Vec<String> = all
            .iter()
            .map(|b| {
                if a.can_access_peer(b).unwrap() {
                    "Y"
                } else {
                    "n"
                }
                .to_string()
            })
            .collect();
        println!("  GPU {}: {}", a.ordinal(), row.join(" "));
        assert!(a.can_access_peer(a).unwrap());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn alloc_and_copy_round_trip_on_every_device() {
    for d in devices() {
        let ctx = Context::new(d).unwrap();
        let data: Vec<u64> = (0..100_003u64).map(|i| i * 3 + 1).collect();
        let mut buf = DeviceBuffer::from_slice(&ctx, &data).unwrap();
        assert_eq!(buf.copy_to_vec().unwrap(), data);
        assert_eq!(buf.len(), data.len());
        assert_eq!(buf.byte_len(), data.len() * 8);

        // Sub-slices read and write the right elements.
        buf.view_mut()
            .slice_mut(10..13)
            .unwrap()
            .copy_from_slice(&[7, 8, 9])
            .unwrap();
        assert_eq!(
            buf.view().slice(9..14).unwrap().copy_to_vec().unwrap(),
            vec![28, 7, 8, 9, 40]
        );
        assert!(buf.view().slice(0..data.len() + 1).is_err());
        let mut wrong = vec![0u64; 3];
        assert!(matches!(
            buf.copy_to_slice(&mut wrong),
            Err(Error::LengthMismatch { .. })
        ));

        // Device-to-device, sync and async.
        let mut copy = DeviceBuffer::<u64>::zeroed(&ctx, data.len()).unwrap();
        assert!(copy.copy_to_vec().unwrap().iter().all(|&x| x == 0));
        copy.copy_from_device(&buf).unwrap();
        assert_eq!(copy.copy_to_vec().unwrap(), buf.copy_to_vec().unwrap());
        let stream = Stream::new(&ctx).unwrap();
        let mut copy2 = DeviceBuffer::<u64>::zeroed(&ctx, data.len()).unwrap();
        copy2.copy_from_device_async(&copy, &stream).unwrap();
        let mut host = vec![0u64; data.len()];
        // SAFETY: `host` lives until the stream is synchronized below.
        unsafe { copy2.view().copy_to_slice_async(&mut host, &stream) }.unwrap();
        stream.synchronize().unwrap();
        assert_eq!(host, copy.copy_to_vec().unwrap());
        copy2.zero().unwrap();
        assert!(copy2.copy_to_vec().unwrap().iter().all(|&x| x == 0));

        // Empty buffers need no allocation and copy nothing.
        let empty = DeviceBuffer::<u32>::zeroed(&ctx, 0).unwrap();
        assert!(empty.copy_to_vec().unwrap().is_empty());
        // An allocation larger than the GPU fails with the driver's out-of-memory error.
        let total = d.total_memory().unwrap();
        let too_big = DeviceBuffer::<u8>::zeroed(&ctx, total * 2).unwrap_err();
        assert_eq!(
            too_big.driver_error().map(|e| e.name()),
            Some("CUDA_ERROR_OUT_OF_MEMORY".into())
        );
    }
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn every_kernel_matches_its_cpu_reference_on_every_device() {
    for d in devices() {
        let ctx = Context::new(d).unwrap();
        let stream = Stream::new(&ctx).unwrap();
        let k = ctx.kernels().unwrap();
        // An odd length exercises the checksum's tail path.
        let n = (1usize << 20) + 3;

        let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, n).unwrap();
        k.fill_pattern(&stream, &mut buf, 1234).unwrap();
        stream.synchronize().unwrap();
        let words = buf.copy_to_vec().unwrap();
        for (i, &w) in words.iter().enumerate() {
            assert_eq!(w, reference::pattern_word(1234, i as u64), "index {i}");
        }
        let gpu_sum = k.checksum(&stream, &buf).unwrap();
        assert_eq!(gpu_sum, reference::checksum_words(&words));
        assert_eq!(gpu_sum, reference::pattern_checksum(1234, n as u64));
        // Unaligned (4-byte but not 16-byte) start: the scalar path.
        let tail = buf.view().slice(1..).unwrap();
        assert_eq!(
            k.checksum(&stream, &tail).unwrap(),
            reference::checksum_words(&words[1..])
        );

        k.transform_words(&stream, &mut buf, 99).unwrap();
        let sum = k.checksum(&stream, &buf).unwrap();
        assert_eq!(
            sum,
            reference::transformed_pattern_checksum(1234, 99, n as u64)
        );
        let words2 = buf.copy_to_vec().unwrap();
        assert!(words2
            .iter()
            .zip(&words)
            .all(|(&b, &a)| b == reference::transform_word(a, 99)));

        k.add_words_atomic(&stream, &mut buf, 7).unwrap();
        k.add_words_atomic(&stream, &mut buf, 5).unwrap();
        stream.synchronize().unwrap();
        let words3 = buf.copy_to_vec().unwrap();
        assert!(words3
            .iter()
            .zip(&words2)
            .all(|(&c, &b)| c == reference::add_word(b, 12)));

        k.iota_u32(&stream, &mut buf, u32::MAX - 5).unwrap();
        stream.synchronize().unwrap();
        let iota = buf.copy_to_vec().unwrap();
        assert!(iota
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (u32::MAX - 5).wrapping_add(i as u32)));

        let xs: Vec<f32> = (0..n).map(|i| (i as f32) * 0.37 - 1000.0).collect();
        let mut fb = DeviceBuffer::from_slice(&ctx, &xs).unwrap();
        k.scale_add_f32(&stream, &mut fb, 1.5, -0.25).unwrap();
        stream.synchronize().unwrap();
        let ys = fb.copy_to_vec().unwrap();
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(
                y.to_bits(),
                reference::scale_add_f32(*x, 1.5, -0.25).to_bits()
            );
        }

        // A byte buffer whose length is not a multiple of 4 is refused, not misread.
        let bytes = DeviceBuffer::<u8>::zeroed(&ctx, 10).unwrap();
        assert!(matches!(
            k.checksum(&stream, &bytes),
            Err(Error::InvalidArgument(_))
        ));
        println!("{}: kernels match the CPU references", d.label());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn buffers_on_two_gpus_in_one_process() {
    let all = devices();
    assert!(
        all.len() >= 2,
        "this test needs 2 GPUs, found {}",
        all.len()
    );
    let ctx0 = Context::new(all[0]).unwrap();
    let ctx1 = Context::new(all[1]).unwrap();
    let s0 = Stream::new(&ctx0).unwrap();
    let s1 = Stream::new(&ctx1).unwrap();
    let mut a = DeviceBuffer::<u32>::zeroed(&ctx0, 1 << 20).unwrap();
    let mut b = DeviceBuffer::<u32>::zeroed(&ctx1, 1 << 20).unwrap();
    ctx0.kernels()
        .unwrap()
        .fill_pattern(&s0, &mut a, 1)
        .unwrap();
    ctx1.kernels()
        .unwrap()
        .fill_pattern(&s1, &mut b, 2)
        .unwrap();
    s0.synchronize().unwrap();
    s1.synchronize().unwrap();
    assert_eq!(
        ctx0.kernels().unwrap().checksum(&s0, &a).unwrap(),
        reference::pattern_checksum(1, 1 << 20)
    );
    assert_eq!(
        ctx1.kernels().unwrap().checksum(&s1, &b).unwrap(),
        reference::pattern_checksum(2, 1 << 20)
    );
    // A peer copy from GPU 0 into GPU 1.
    b.copy_from_device(&a).unwrap();
    assert_eq!(
        ctx1.kernels().unwrap().checksum(&s1, &b).unwrap(),
        reference::pattern_checksum(1, 1 << 20)
    );
    // A kernel of GPU 1 refuses memory of GPU 0 and a stream of GPU 0.
    assert!(matches!(
        ctx1.kernels().unwrap().checksum(&s1, &a),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ctx1.kernels().unwrap().checksum(&s0, &b),
        Err(Error::InvalidArgument(_))
    ));
}
