//! GPU tests of the frame kernels of the channel examples: `fill_frame` writes exactly
//! [`reference::frame_word`], `verify_frame` counts every wrong word (aligned and unaligned,
//! any length) and adds to its counter, `stamp_time` reads a timer that never goes backwards;
//! bad arguments are refused before a launch. Run with `--include-ignored` on a GPU machine.

use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

/// Words of the test frames: not a multiple of 4 (the tail after the 16-byte loads) nor of the
/// block size.
const LEN: usize = 100_003;

fn gpu0() -> Context {
    Context::new(Device::by_ordinal(0).unwrap()).unwrap()
}

/// The counter after `verify_frame(buf, seq)` on a counter holding `start`.
fn errors_of(
    ctx: &Context,
    stream: &Stream<'_>,
    buf: &impl DeviceMemory<u32>,
    seq: u64,
    start: u32,
) -> u32 {
    let mut errors = DeviceBuffer::from_slice(ctx, &[start]).unwrap();
    ctx.kernels()
        .unwrap()
        .verify_frame(stream, buf, seq, &mut errors)
        .unwrap();
    stream.synchronize().unwrap();
    errors.copy_to_vec().unwrap()[0]
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fill_frame_writes_the_reference_and_verify_frame_counts_wrong_words() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let seq = 0x1234_5678_9abc;
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, LEN).unwrap();
    k.fill_frame(&stream, &mut buf, seq).unwrap();
    stream.synchronize().unwrap();
    let host = buf.copy_to_vec().unwrap();
    assert_eq!(host, reference::frame_words(seq, LEN as u64));

    assert_eq!(errors_of(&ctx, &stream, &buf, seq, 0), 0);
    // It adds to the counter; it does not zero it.
    assert_eq!(errors_of(&ctx, &stream, &buf, seq, 7), 7);
    // Another frame's words are (almost) all wrong.
    let stale = errors_of(&ctx, &stream, &buf, seq + 1, 0) as u64;
    assert_eq!(stale, reference::frame_errors(&host, seq + 1));
    assert!(stale >= LEN as u64 - 2, "{stale}");

    // One corrupted word, in the 16-byte-load part and in the tail: exactly one error each.
    for at in [0, 12_345, LEN - 1] {
        let mut bad = host.clone();
        bad[at] ^= 0x8000_0000;
        let dev = DeviceBuffer::from_slice(&ctx, &bad).unwrap();
        assert_eq!(errors_of(&ctx, &stream, &dev, seq, 0), 1, "word {at}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn unaligned_and_typed_frames_use_word_positions_from_their_start() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    // A view starting one word in: 4-byte aligned, not 16 (the scalar path).
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, LEN + 1).unwrap();
    let mut inner = buf.view_mut().slice_mut(1..).unwrap();
    k.fill_frame(&stream, &mut inner, 9).unwrap();
    stream.synchronize().unwrap();
    assert_eq!(errors_of(&ctx, &stream, &inner, 9, 0), 0);
    let host = buf.copy_to_vec().unwrap();
    assert_eq!(host[0], 0, "fill_frame wrote before its view");
    assert_eq!(&host[1..], reference::frame_words(9, LEN as u64).as_slice());
    // A frame of bytes (RGBA pixels) is checked as words.
    let mut pixels = DeviceBuffer::<u8>::zeroed(&ctx, 4 * 1024).unwrap();
    k.fill_frame(&stream, &mut pixels, 3).unwrap();
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 2).unwrap();
    k.verify_frame(&stream, &pixels, 3, &mut errors).unwrap();
    k.verify_frame(&stream, &pixels, 4, &mut errors).unwrap();
    stream.synchronize().unwrap();
    let counts = errors.copy_to_vec().unwrap();
    assert!(counts[0] >= 1023, "{counts:?}");
    assert_eq!(
        counts[1], 0,
        "only the first element is touched: {counts:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bad_arguments_are_refused_before_a_launch() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut odd = DeviceBuffer::<u8>::zeroed(&ctx, 6).unwrap();
    let e = k.fill_frame(&stream, &mut odd, 1).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let mut empty = DeviceBuffer::<u32>::zeroed(&ctx, 0).unwrap();
    let frame = DeviceBuffer::<u32>::zeroed(&ctx, 16).unwrap();
    let e = k.verify_frame(&stream, &frame, 1, &mut empty).unwrap_err();
    assert!(e.to_string().contains("error counter is empty"), "{e}");
    let mut stamps = DeviceBuffer::<u64>::zeroed(&ctx, 2).unwrap();
    let e = k.stamp_time(&stream, &mut stamps, 2).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    // An empty frame is fine and has no errors.
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 1).unwrap();
    k.fill_frame(&stream, &mut empty, 1).unwrap();
    k.verify_frame(&stream, &empty, 1, &mut errors).unwrap();
    stream.synchronize().unwrap();
    assert_eq!(errors.copy_to_vec().unwrap(), [0]);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn stamp_time_is_monotonic_and_counts_nanoseconds() {
    let ctx = gpu0();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    const N: usize = 16;
    let mut stamps = DeviceBuffer::<u64>::zeroed(&ctx, N).unwrap();
    let mut work = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 22).unwrap();
    let started = std::time::Instant::now();
    for i in 0..N {
        k.stamp_time(&stream, &mut stamps, i).unwrap();
        k.fill_frame(&stream, &mut work, i as u64).unwrap();
    }
    stream.synchronize().unwrap();
    let host_ns = started.elapsed().as_nanos() as u64;
    let t = stamps.copy_to_vec().unwrap();
    assert!(t[0] > 0, "{t:?}");
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {t:?}");
    assert!(
        t[N - 1] > t[0],
        "the timer did not move over {N} fills: {t:?}"
    );
    // Nanoseconds: the GPU span fits inside the host's wall time around it.
    let span = t[N - 1] - t[0];
    assert!(
        span <= host_ns,
        "GPU span {span} ns > host wall time {host_ns} ns"
    );
}
