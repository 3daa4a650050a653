//! GPU tests of the cudarc interop (`--features cudarc`): cudarc copies, memsets and a kernel
//! (our PTX, loaded through cudarc's module loading; no nvrtc) on a shared buffer, checked
//! through this crate's API; a stream of another context refused (needs 2 GPUs, fails on fewer).
#![cfg(feature = "cudarc")]

use cuda_ipc::cudarc_interop::{cudarc_context, CudarcExt, CudarcExtMut};
use cuda_ipc::prelude::*;
use cudarc::driver::{LaunchConfig as CuLaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

const PTX: &str = include_str!("data/user_kernels.ptx");
const LEN: usize = 65_537;

fn words() -> Vec<u32> {
    (0..LEN as u32).map(|i| i ^ 0xa5a5_0000).collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cudarc_copies_and_launches_work_on_a_shared_buffer_in_place() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let cu = cudarc_context(&ctx).unwrap();
    assert_eq!(cu.ordinal(), 0);
    let stream = cu.new_stream().unwrap();
    for transport in [Transport::Legacy, Transport::Auto] {
        let mut shared = SharedDeviceBuffer::from_slice(&ctx, &words(), transport).unwrap();

        // cudarc reads what this crate wrote.
        let seen: Vec<u32> = stream
            .clone_dtoh(&shared.cudarc_view(&stream).unwrap())
            .unwrap();
        assert_eq!(seen, words(), "{transport:?}");

        // cudarc zeroes it, then writes into it; this crate sees both.
        stream
            .memset_zeros(&mut shared.cudarc_view_mut(&stream).unwrap())
            .unwrap();
        stream.synchronize().unwrap();
        assert!(shared.copy_to_vec().unwrap().iter().all(|&w| w == 0));
        stream
            .memcpy_htod(&words(), &mut shared.cudarc_view_mut(&stream).unwrap())
            .unwrap();
        stream.synchronize().unwrap();
        assert_eq!(shared.copy_to_vec().unwrap(), words());

        // A cudarc kernel launch on it: add_mixed(words, u8, u16, u64 n, u32).
        let module = cu.load_module(Ptx::from_src(PTX)).unwrap();
        let f = module.load_function("add_mixed").unwrap();
        let (a8, a16, n, a32) = (1u8, 2u16, LEN as u64, 40u32);
        {
            let mut view = shared.cudarc_view_mut(&stream).unwrap();
            let mut launch = stream.launch_builder(&f);
            launch.arg(&mut view).arg(&a8).arg(&a16).arg(&n).arg(&a32);
            // SAFETY: the arguments are add_mixed's parameters; it touches words[0..n].
            unsafe { launch.launch(CuLaunchConfig::for_num_elems(LEN as u32)) }.unwrap();
        }
        stream.synchronize().unwrap();
        let want: Vec<u32> = words().iter().map(|w| w.wrapping_add(43)).collect();
        assert_eq!(shared.copy_to_vec().unwrap(), want, "{transport:?}");

        // A device-to-device copy by cudarc from the shared buffer into a cudarc allocation.
        let copy = stream
            .clone_dtod(&shared.cudarc_view(&stream).unwrap())
            .unwrap();
        assert_eq!(stream.clone_dtoh(&copy).unwrap(), want);
    }
    // The crate's own kernels still work after cudarc left its context bound.
    let s = Stream::new(&ctx).unwrap();
    let buf = DeviceBuffer::from_slice(&ctx, &words()).unwrap();
    assert_eq!(
        ctx.kernels().unwrap().checksum(&s, &buf).unwrap(),
        cuda_ipc::kernels::reference::checksum_words(&words())
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_cudarc_stream_of_another_gpu_is_refused() {
    let count = Device::count().unwrap();
    assert!(
        count >= 2,
        "this test needs 2 GPUs, this machine has {count}: run it on a 2-GPU machine"
    );
    let ctx0 = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let ctx1 = Context::new(Device::by_ordinal(1).unwrap()).unwrap();
    let stream1 = cudarc_context(&ctx1).unwrap().default_stream();
    let mut buf = DeviceBuffer::from_slice(&ctx0, &words()).unwrap();
    let e = buf.cudarc_view(&stream1).unwrap_err().to_string();
    assert!(e.contains("device ordinal 1") && e.contains("GPU 0"), "{e}");
    assert!(buf.cudarc_view_mut(&stream1).is_err());
}
