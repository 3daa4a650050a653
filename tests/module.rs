//! User modules and launches without a GPU: launch-shape math, parameter packing, the typed
//! parameter lists, image checks (real nvcc output under tests/data, and truncated or forged
//! headers), PTX parsing and the load-error explanations.

use cuda_ipc::error::{codes, DriverError};
use cuda_ipc::launch::{Args, LaunchConfig, Params, Ptr, PtrMut};
use cuda_ipc::module::{
    explain_load_error, image_kind, max_ptx_isa_for_cuda, ptx_entry_points, ptx_target,
    ptx_version, ImageKind,
};
use cuda_ipc::prelude::*;

const PTX: &str = include_str!("data/user_kernels.ptx");
const CUBIN: &[u8] = include_bytes!("data/user_kernels.cubin");
const FATBIN: &[u8] = include_bytes!("data/user_kernels.fatbin");

#[test]
fn for_num_elems_covers_every_element_with_at_least_one_block() {
    let c = LaunchConfig::for_num_elems(0);
    assert_eq!(
        (c.grid, c.block, c.shared_mem_bytes),
        ((1, 1, 1), (256, 1, 1), 0)
    );
    assert_eq!(LaunchConfig::for_num_elems(1).grid, (1, 1, 1));
    assert_eq!(LaunchConfig::for_num_elems(256).grid, (1, 1, 1));
    assert_eq!(LaunchConfig::for_num_elems(257).grid, (2, 1, 1));
    assert_eq!(LaunchConfig::for_num_elems(1 << 20).grid, (4096, 1, 1));
    for n in [1u64, 255, 256, 257, 1000, 1 << 33] {
        let c = LaunchConfig::for_num_elems(n);
        assert!(c.total_threads() >= n, "{n}: {c:?}");
        assert!(c.total_threads() < n + 256, "{n}: {c:?}");
        c.validate().unwrap();
    }
    // Beyond what one grid can hold, the grid is capped (kernels loop with a grid stride).
    let c = LaunchConfig::for_num_elems(u64::MAX);
    assert_eq!(c.grid.0, LaunchConfig::MAX_GRID_X);
    c.validate().unwrap();
    assert_eq!(
        LaunchConfig::for_num_elems(10)
            .with_shared_mem(4096)
            .shared_mem_bytes,
        4096
    );
}

#[test]
fn impossible_shapes_are_refused_with_the_reason() {
    let base = LaunchConfig::for_num_elems(1000);
    let cases = [
        (
            LaunchConfig {
                grid: (0, 1, 1),
                ..base
            },
            "at least 1",
        ),
        (
            LaunchConfig {
                block: (32, 0, 1),
                ..base
            },
            "at least 1",
        ),
        (
            LaunchConfig {
                block: (1024, 2, 1),
                ..base
            },
            "2048 threads per block",
        ),
        (
            LaunchConfig {
                block: (1, 1, 65),
                ..base
            },
            "block z",
        ),
        (
            LaunchConfig {
                grid: (u32::MAX, 1, 1),
                ..base
            },
            "grid x",
        ),
        (
            LaunchConfig {
                grid: (1, 65536, 1),
                ..base
            },
            "grid y and z",
        ),
    ];
    for (config, needle) in cases {
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{config:?}: {e}");
    }
    LaunchConfig {
        grid: (7, 65535, 65535),
        block: (8, 8, 16),
        shared_mem_bytes: 0,
    }
    .validate()
    .unwrap();
    assert_eq!(
        LaunchConfig {
            grid: (u32::MAX, u32::MAX, u32::MAX),
            block: (u32::MAX, u32::MAX, u32::MAX),
            shared_mem_bytes: 0
        }
        .total_threads(),
        u64::MAX
    );
}

#[test]
fn parameters_are_packed_at_their_alignment_with_their_bytes() {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Pair {
        a: u32,
        b: f32,
    }
    #[repr(C, align(16))]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Wide([u64; 2]);

    let mut p = Params::new();
    assert!(p.is_empty());
    p.push(7u8).unwrap();
    p.push(0x1122_3344_5566_7788u64).unwrap();
    p.push(1.5f32).unwrap();
    p.push(Pair { a: 3, b: -1.0 }).unwrap();
    p.push(0xabu8).unwrap();
    p.push(Wide([1, 2])).unwrap();
    assert_eq!(p.len(), 6);
    assert_eq!(p.bytes(0), &[7]);
    assert_eq!(p.bytes(1), &0x1122_3344_5566_7788u64.to_ne_bytes());
    assert_eq!(p.bytes(2), &1.5f32.to_ne_bytes());
    assert_eq!(&p.bytes(3)[..4], &3u32.to_ne_bytes());
    assert_eq!(&p.bytes(3)[4..], &(-1.0f32).to_ne_bytes());
    assert_eq!(p.bytes(4), &[0xab]);
    assert_eq!(p.bytes(5).len(), 16);
    assert_eq!(p.memory_count(), 0);
    let dbg = format!("{p:?}");
    assert!(dbg.starts_with("[[7]"), "{dbg}");
}

#[test]
fn parameters_no_kernel_can_take_are_refused() {
    #[repr(C, align(32))]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Over([u8; 32]);
    let mut p = Params::new();
    assert!(p.push(()).unwrap_err().to_string().contains("size 0"));
    assert!(p
        .push(Over([0; 32]))
        .unwrap_err()
        .to_string()
        .contains("alignment 32"));
    // 4096 bytes in all, at most.
    for _ in 0..4 {
        p.push([0u8; 1024]).unwrap();
    }
    let e = p.push(1u8).unwrap_err().to_string();
    assert!(e.contains("4096 bytes"), "{e}");
    assert_eq!(p.len(), 4);
}

#[test]
fn tuples_of_scalars_pack_in_order() {
    let p = <(u8, u16, u64, u32) as Args<(u8, u16, u64, u32)>>::pack((1, 2, 3, 4)).unwrap();
    assert_eq!(p.len(), 4);
    assert_eq!(p.bytes(0), &[1]);
    assert_eq!(p.bytes(1), &2u16.to_ne_bytes());
    assert_eq!(p.bytes(2), &3u64.to_ne_bytes());
    assert_eq!(p.bytes(3), &4u32.to_ne_bytes());
    assert!(<() as Args<()>>::pack(()).unwrap().is_empty());
    // Literals take the parameter's type.
    fn pack<'a, P, A: Args<'a, P>>(args: A) -> Params<'a> {
        args.pack().unwrap()
    }
    let p = pack::<(f32, u64), _>((2.5, 9));
    assert_eq!(p.bytes(0), &2.5f32.to_ne_bytes());
    assert_eq!(p.bytes(1), &9u64.to_ne_bytes());
}

/// The argument types each parameter type accepts: compiled, not run (it needs a GPU); what
/// must not compile is in the `compile_fail` examples of `cuda_ipc::launch`.
#[allow(dead_code, clippy::too_many_arguments)]
fn typed_arguments_compile<'c>(
    stream: &Stream<'c>,
    f: &Function<'_, (PtrMut<f32>, Ptr<f32>, f32, u32)>,
    owned: &mut DeviceBuffer<'c, f32>,
    shared: &mut SharedDeviceBuffer<'c, f32>,
    imported: &SharedDeviceBuffer<'c, f32>,
    ro: DeviceSlice<'_, f32>,
) -> cuda_ipc::Result<()> {
    let n = owned.len() as u32;
    let config = LaunchConfig::for_num_elems(n.into());
    // SAFETY: never run.
    unsafe {
        f.launch(stream, config, (&mut *owned, imported, 2.0, n))?;
        f.launch(stream, config, (&mut *shared, &*owned, 2.0, n))?;
        f.launch(stream, config, (owned.view_mut(), ro, 2.0, n))?;
        f.launch(stream, config, (shared.view_mut(), &mut *owned, 2.0, n))?;
        let view = owned.view_mut();
        let (head, _) = (view.slice_mut(0..1)?, ());
        f.launch(stream, config, (head, shared.view(), 2.0, 1))?;
    }
    Ok(())
}

#[test]
fn real_nvcc_output_is_told_apart() {
    assert_eq!(image_kind(PTX.as_bytes()).unwrap(), ImageKind::Ptx);
    assert_eq!(image_kind(CUBIN).unwrap(), ImageKind::Cubin);
    assert_eq!(image_kind(FATBIN).unwrap(), ImageKind::Fatbin);
    let mut with_nul = PTX.as_bytes().to_vec();
    with_nul.push(0);
    assert_eq!(image_kind(&with_nul).unwrap(), ImageKind::Ptx);
}

#[test]
fn truncated_binaries_are_refused_before_the_driver_reads_past_them() {
    for (name, image) in [("cubin", CUBIN), ("fatbin", FATBIN)] {
        for cut in [1, 16, 63, 64, image.len() / 2, image.len() - 1] {
            let e = image_kind(&image[..cut])
                .expect_err(&format!("{name} cut at {cut} accepted"))
                .to_string();
            assert!(
                e.contains("not a loadable module image"),
                "{name} {cut}: {e}"
            );
        }
    }
    // A forged ELF header whose section table points far away.
    let mut elf = CUBIN[..64].to_vec();
    elf[0x38..0x3A].copy_from_slice(&0u16.to_le_bytes()); // no program headers
    assert_eq!(
        image_kind(&{
            let mut bare = elf.clone();
            bare[0x3C..0x3E].copy_from_slice(&0u16.to_le_bytes());
            bare
        })
        .unwrap(),
        ImageKind::Cubin
    );
    elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    elf[0x3C..0x3E].copy_from_slice(&1u16.to_le_bytes());
    assert!(image_kind(&elf)
        .unwrap_err()
        .to_string()
        .contains("section headers"));
    // A 32-bit ELF is not a cubin.
    let mut elf32 = CUBIN.to_vec();
    elf32[4] = 1;
    assert!(image_kind(&elf32)
        .unwrap_err()
        .to_string()
        .contains("64-bit"));
    // A fatbin whose header claims more than there is.
    let mut fat = FATBIN.to_vec();
    fat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(image_kind(&fat).unwrap_err().to_string().contains("fatbin"));
    assert!(image_kind(b"").unwrap_err().to_string().contains("empty"));
    assert!(image_kind(b"hello, world")
        .unwrap_err()
        .to_string()
        .contains("nor PTX text"));
    assert!(image_kind(b".version 7.0\0junk")
        .unwrap_err()
        .to_string()
        .contains("NUL byte at offset 12"));
}

#[test]
fn ptx_headers_and_entry_points_are_read() {
    assert_eq!(ptx_version(PTX), Some((7, 0)));
    assert_eq!(ptx_target(PTX), Some("sm_75"));
    assert_eq!(ptx_entry_points(PTX), ["saxpy", "add_mixed"]);
    let mut builtin = ptx_entry_points(cuda_ipc::kernels::PTX);
    builtin.sort();
    let mut expected = cuda_ipc::kernels::ENTRY_POINTS.to_vec();
    expected.sort();
    assert_eq!(builtin, expected);
    let odd = ".version 8.5\n.target sm_90a, texmode_independent\n.entry _Z3fooPf(\n.visible .entry\tbar (";
    assert_eq!(ptx_version(odd), Some((8, 5)));
    assert_eq!(ptx_target(odd), Some("sm_90a"));
    assert_eq!(ptx_entry_points(odd), ["_Z3fooPf", "bar"]);
    assert_eq!(ptx_version("no header"), None);
    assert_eq!(max_ptx_isa_for_cuda(12, 2), Some((8, 2)));
    assert_eq!(max_ptx_isa_for_cuda(12, 9), Some((8, 8)));
    assert_eq!(max_ptx_isa_for_cuda(13, 0), Some((9, 0)));
    assert_eq!(max_ptx_isa_for_cuda(10, 2), None);
}

#[test]
fn load_errors_say_what_is_wrong_and_what_to_do() {
    let too_new = ".version 9.0\n.target sm_75\n";
    let e = explain_load_error(
        DriverError::new("cuModuleLoadData", codes::UNSUPPORTED_PTX_VERSION),
        ImageKind::Ptx,
        Some(too_new),
        Some((12, 2)),
        Some((9, 0)),
    );
    let text = e.to_string();
    assert!(matches!(e, Error::Module { .. }), "{e:?}");
    assert_eq!(
        e.driver_error().map(|d| d.code()),
        Some(codes::UNSUPPORTED_PTX_VERSION)
    );
    for needle in [
        "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        ".version 9.0",
        "CUDA 12.2",
        "up to ISA 8.2",
        "update the NVIDIA driver",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }

    let e = explain_load_error(
        DriverError::new("cuModuleLoadData", codes::NO_BINARY_FOR_GPU),
        ImageKind::Cubin,
        None,
        Some((13, 0)),
        Some((9, 0)),
    )
    .to_string();
    assert!(
        e.contains("cubin") && e.contains("sm_90") && e.contains("code=compute_XX"),
        "{e}"
    );
    let e = explain_load_error(
        DriverError::new("cuModuleLoadData", codes::INVALID_IMAGE),
        ImageKind::Fatbin,
        None,
        None,
        None,
    )
    .to_string();
    assert!(
        e.contains("CUDA_ERROR_INVALID_IMAGE") && e.contains("fatbin"),
        "{e}"
    );
    let e = explain_load_error(
        DriverError::new("cuModuleLoadData", codes::INVALID_PTX),
        ImageKind::Ptx,
        Some(".version 8.0\n.target sm_100\n"),
        None,
        Some((8, 0)),
    )
    .to_string();
    assert!(
        e.contains("targets sm_100") && e.contains("compute capability 8.0"),
        "{e}"
    );
    // Anything else is the plain driver error.
    let e = explain_load_error(
        DriverError::new("cuModuleLoadData", codes::OUT_OF_MEMORY),
        ImageKind::Ptx,
        None,
        None,
        None,
    );
    assert!(matches!(e, Error::Driver(_)), "{e:?}");
}
