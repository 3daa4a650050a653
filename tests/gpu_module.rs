//! GPU tests of user modules: the kernels of tests/data/user_kernels.cu loaded as PTX, fatbin,
//! cubin and from a file, launched on owned buffers, on shared buffers, and on a buffer
//! imported from another process; arguments of another context refused before the launch
//! (needs 2 GPUs and fails on fewer); load and lookup errors explained.
//!
//! Run with `--include-ignored` on a machine with two NVIDIA GPUs.

use std::path::PathBuf;
use std::time::Duration;

use cuda_ipc::error::codes;
use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;

mod common;
use common::{temp_dir, RoleProcess};

const PTX: &str = include_str!("data/user_kernels.ptx");
const CUBIN: &[u8] = include_bytes!("data/user_kernels.cubin");
const FATBIN: &[u8] = include_bytes!("data/user_kernels.fatbin");
const LEN: usize = 100_003; // not a multiple of the block size
const ADD: (u8, u16, u32) = (3, 500, 70_000);

type Saxpy = (PtrMut<f32>, Ptr<f32>, f32, u32);
type AddMixed = (PtrMut<u32>, u8, u16, u64, u32);

fn added(x: u32) -> u32 {
    x.wrapping_add(ADD.0 as u32 + ADD.1 as u32 + ADD.2)
}

fn iota(len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect()
}

fn gpu0() -> Context {
    Context::new(Device::by_ordinal(0).unwrap()).unwrap()
}

/// Runs `add_mixed` of `module` on `buf` (all of it) and waits.
fn add_mixed(module: &Module<'_>, stream: &Stream<'_>, buf: &mut impl DeviceMemoryMut<u32>) {
    let f = module.function::<AddMixed>("add_mixed").unwrap();
    let n = buf.len() as u64;
    // SAFETY: AddMixed is add_mixed's parameter list; it touches words[0..n] only.
    unsafe {
        f.launch(
            stream,
            LaunchConfig::for_num_elems(n),
            (buf, ADD.0, ADD.1, n, ADD.2),
        )
    }
    .unwrap();
    stream.synchronize().unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_user_ptx_kernel_runs_on_owned_and_shared_buffers() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let module = Module::from_ptx(&ctx, PTX).unwrap();
    assert_eq!(module.kind(), cuda_ipc::module::ImageKind::Ptx);

    // saxpy on owned buffers, with a small grid so the grid-stride loop is exercised too.
    let x: Vec<f32> = (0..LEN).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..LEN).map(|i| 1.0 - i as f32 * 0.5).collect();
    let dx = DeviceBuffer::from_slice(&ctx, &x).unwrap();
    let mut dy = DeviceBuffer::from_slice(&ctx, &y).unwrap();
    let saxpy = module.function::<Saxpy>("saxpy").unwrap();
    assert_eq!(saxpy.name(), "saxpy");
    let config = LaunchConfig {
        grid: (7, 1, 1),
        block: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: Saxpy is saxpy's parameter list; n is both buffers' length.
    unsafe { saxpy.launch(&stream, config, (&mut dy, &dx, 3.0, LEN as u32)) }.unwrap();
    stream.synchronize().unwrap();
    let want: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(x, y)| 3.0f32.mul_add(*x, *y))
        .collect();
    assert_eq!(dy.copy_to_vec().unwrap(), want);

    // A sub-range through views: only that range changes.
    let mut dy2 = DeviceBuffer::from_slice(&ctx, &y).unwrap();
    {
        let part = dy2.view_mut().slice_mut(10..20).unwrap();
        let xs = dx.view().slice(0..10).unwrap();
        // SAFETY: as above, n = 10 = both views' length.
        unsafe {
            saxpy.launch(
                &stream,
                LaunchConfig::for_num_elems(10),
                (part, xs, 2.0, 10),
            )
        }
        .unwrap();
    }
    stream.synchronize().unwrap();
    let got = dy2.copy_to_vec().unwrap();
    for (i, v) in got.iter().enumerate() {
        let want = if (10..20).contains(&i) {
            2.0f32.mul_add(x[i - 10], y[i])
        } else {
            y[i]
        };
        assert_eq!(*v, want, "element {i}");
    }

    // Parameters of 1, 2, 8 and 4 bytes on a shared buffer (both transports).
    for transport in [Transport::Legacy, Transport::Auto] {
        let mut shared = SharedDeviceBuffer::from_slice(&ctx, &iota(LEN), transport).unwrap();
        add_mixed(&module, &stream, &mut shared);
        let want: Vec<u32> = iota(LEN).into_iter().map(added).collect();
        assert_eq!(shared.copy_to_vec().unwrap(), want, "{transport:?}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fatbin_cubin_and_files_load_or_explain_why_not() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let (major, minor) = ctx.device().compute_capability().unwrap();

    // The fatbin carries compute_75 PTX: it loads on every GPU this crate supports.
    let fat = Module::from_image(&ctx, FATBIN).unwrap();
    assert_eq!(fat.kind(), cuda_ipc::module::ImageKind::Fatbin);
    assert!(fat.entry_points().is_none());
    let mut buf = DeviceBuffer::from_slice(&ctx, &iota(LEN)).unwrap();
    add_mixed(&fat, &stream, &mut buf);
    assert_eq!(
        buf.copy_to_vec().unwrap(),
        iota(LEN).into_iter().map(added).collect::<Vec<_>>()
    );

    // From files.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    assert_eq!(
        Module::from_file(&ctx, data.join("user_kernels.ptx"))
            .unwrap()
            .entry_points()
            .unwrap(),
        ["saxpy", "add_mixed"]
    );
    Module::from_file(&ctx, data.join("user_kernels.fatbin")).unwrap();
    let e = Module::from_file(&ctx, data.join("missing.ptx")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");

    // The cubin holds sm_75 machine code only: it runs on compute capability 7.5, and
    // anywhere else the error names the GPU's architecture and the fix.
    let loaded = Module::from_image(&ctx, CUBIN);
    match loaded {
        Ok(m) => {
            assert_eq!(
                (major, minor),
                (7, 5),
                "an sm_75 cubin loaded on {major}.{minor}"
            );
            m.function::<Saxpy>("saxpy").unwrap();
        }
        Err(e) => {
            assert_ne!((major, minor), (7, 5), "{e}");
            let text = e.to_string();
            assert!(matches!(e, Error::Module { .. }), "{e:?}");
            assert!(
                text.contains(&format!("sm_{major}{minor}")) && text.contains("cubin"),
                "{text}"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn missing_entry_points_and_too_new_ptx_are_explained() {
    let ctx = gpu0();
    let module = Module::from_ptx(&ctx, PTX).unwrap();
    let e = module.function::<Saxpy>("saxpy_typo").unwrap_err();
    assert_eq!(e.driver_error().map(|d| d.code()), Some(codes::NOT_FOUND));
    let text = e.to_string();
    assert!(
        text.contains("\"saxpy_typo\"") && text.contains("[\"saxpy\", \"add_mixed\"]"),
        "{text}"
    );
    assert!(text.contains("extern \"C\""), "{text}");
    let e = module.function::<()>("a\0b").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");

    // A PTX ISA no driver knows.
    let future = PTX.replace(".version 7.0", ".version 99.0");
    let e = Module::from_ptx(&ctx, &future).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Module { .. }), "{e:?}");
    assert_eq!(
        e.driver_error().map(|d| d.code()),
        Some(codes::UNSUPPORTED_PTX_VERSION),
        "{text}"
    );
    assert!(
        text.contains(".version 99.0") && text.contains("update the NVIDIA driver"),
        "{text}"
    );

    // Garbage is refused before the driver sees it.
    let e = Module::from_image(&ctx, b"\x7fELF truncated").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn memory_or_a_stream_of_another_context_is_refused_before_the_launch() {
    let count = Device::count().unwrap();
    assert!(
        count >= 2,
        "this test needs 2 GPUs (two primary contexts; one GPU has only one), this machine \
         has {count}: run it on a 2-GPU machine"
    );
    let ctx0 = gpu0();
    let ctx1 = Context::new(Device::by_ordinal(1).unwrap()).unwrap();
    let stream0 = Stream::new(&ctx0).unwrap();
    let stream1 = Stream::new(&ctx1).unwrap();
    let module0 = Module::from_ptx(&ctx0, PTX).unwrap();
    let f = module0.function::<AddMixed>("add_mixed").unwrap();
    let mut on1 = DeviceBuffer::from_slice(&ctx1, &iota(LEN)).unwrap();
    let mut shared1 = SharedDeviceBuffer::from_slice(&ctx1, &iota(LEN), Transport::Auto).unwrap();
    let mut on0 = DeviceBuffer::from_slice(&ctx0, &iota(LEN)).unwrap();
    let n = LEN as u64;
    let config = LaunchConfig::for_num_elems(n);

    // Each launch below is refused before the driver; were one not, it would still be sound:
    // AddMixed is add_mixed's parameter list and n the buffers' length.
    // SAFETY: as above.
    let e = unsafe { f.launch(&stream0, config, (&mut on1, 1u8, 0u16, n, 0u32)) }.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(
        text.contains("kernel argument 0") && text.contains("GPU 1"),
        "{text}"
    );
    // SAFETY: as above.
    let e = unsafe { f.launch(&stream0, config, (&mut shared1, 1u8, 0u16, n, 0u32)) }.unwrap_err();
    assert!(e.to_string().contains("kernel argument 0"), "{e}");
    // SAFETY: as above.
    let e = unsafe { f.launch(&stream1, config, (&mut on0, 1u8, 0u16, n, 0u32)) }.unwrap_err();
    assert!(e.to_string().contains("the stream belongs to"), "{e}");
    // A module loaded in one context is not used with another's stream, even with no memory.
    // SAFETY: as above (no elements).
    let e =
        unsafe { f.launch(&stream1, config, (on0.view_mut(), 1u8, 0u16, 0u64, 0u32)) }.unwrap_err();
    assert!(e.to_string().contains("stream"), "{e}");
    ctx0.synchronize().unwrap();
    ctx1.synchronize().unwrap();
    // Nothing ran.
    assert_eq!(on1.copy_to_vec().unwrap(), iota(LEN));
    assert_eq!(shared1.copy_to_vec().unwrap(), iota(LEN));
    assert_eq!(on0.copy_to_vec().unwrap(), iota(LEN));
    // The same memory with the module loaded in its own context works.
    let module1 = Module::from_ptx(&ctx1, PTX).unwrap();
    add_mixed(&module1, &stream1, &mut on1);
    assert_eq!(
        on1.copy_to_vec().unwrap(),
        iota(LEN).into_iter().map(added).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_user_kernel_writes_a_buffer_imported_from_another_process() {
    for transport in ["legacy", "fd"] {
        let dir = temp_dir(&format!("module-{transport}"));
        let path = dir.join("words");
        let mut producer = RoleProcess::spawn(
            &[],
            &[
                ("CUDA_IPC_TEST_ROLE", "producer".into()),
                ("CUDA_IPC_TEST_TRANSPORT", transport.into()),
                ("CUDA_IPC_TEST_PATH", path.display().to_string()),
            ],
        );
        producer.expect_line("PRODUCER: published", Duration::from_secs(60));
        {
            let ctx = gpu0();
            let stream = Stream::new(&ctx).unwrap();
            let module = Module::from_ptx(&ctx, PTX).unwrap();
            let mut imported =
                SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
            assert!(!imported.is_owner());
            assert_eq!(imported.copy_to_vec().unwrap(), iota(LEN));
            add_mixed(&module, &stream, &mut imported);
        } // releases the lease: the producer checks what the kernel wrote
        let (ok, lines) = producer.finish(Duration::from_secs(60));
        assert!(ok, "{transport}: producer failed:\n{}", lines.join("\n"));
        assert!(
            lines.iter().any(|l| l.contains("PRODUCER: verified")),
            "{lines:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The role dispatcher (see tests/gpu_ipc.rs): returns at once unless CUDA_IPC_TEST_ROLE is set.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    let Ok(role) = std::env::var("CUDA_IPC_TEST_ROLE") else {
        return;
    };
    assert_eq!(role, "producer");
    let transport = Transport::parse(&std::env::var("CUDA_IPC_TEST_TRANSPORT").unwrap()).unwrap();
    let path = PathBuf::from(std::env::var("CUDA_IPC_TEST_PATH").unwrap());
    let ctx = gpu0();
    let buf = SharedDeviceBuffer::from_slice(&ctx, &iota(LEN), transport).unwrap();
    let exporter = Exporter::bind(&path, &buf).unwrap();
    println!("PRODUCER: published");
    exporter.wait_consumers(1, Duration::from_secs(60)).unwrap();
    exporter.wait_released(Duration::from_secs(60)).unwrap();
    assert_eq!(
        buf.copy_to_vec().unwrap(),
        iota(LEN).into_iter().map(added).collect::<Vec<_>>(),
        "the consumer's kernel did not write what add_mixed computes"
    );
    println!("PRODUCER: verified");
}
