//! The shared control pages of channels, without a GPU: what a peer that receives one can and
//! cannot do with it, and what a subscriber refuses to map.

use std::os::fd::{AsFd, AsRawFd};

use cuda_ipc::os::{self, SharedMapping};

const PAGE: usize = 4096;

#[test]
fn a_shared_words_file_cannot_be_resized_by_a_peer() {
    let fd = os::shared_words_file("test", PAGE).unwrap();
    os::check_shared_words_file(fd.as_fd(), PAGE).unwrap();
    // SAFETY: plain syscalls on our own fd.
    let shrink = unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
    assert_eq!(
        shrink, -1,
        "a sealed page must not shrink (a peer would make us SIGBUS)"
    );
    // SAFETY: as above.
    let grow = unsafe { libc::ftruncate(fd.as_raw_fd(), (2 * PAGE) as libc::off_t) };
    assert_eq!(grow, -1, "a sealed page must not grow");
}

#[test]
fn after_sealing_a_peer_maps_the_channel_page_read_only() {
    let fd = os::shared_words_file("chan", PAGE).unwrap();
    let mine = SharedMapping::map(fd.as_fd(), PAGE, true).unwrap();
    os::seal_future_writes(fd.as_fd()).unwrap();
    // What a hostile subscriber would try: a writable mapping of the channel page.
    let err = SharedMapping::map(fd.as_fd(), PAGE, true).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let theirs = SharedMapping::map(fd.as_fd(), PAGE, false).unwrap();
    // Nor can it make its read-only mapping writable.
    // SAFETY: changes the protection of a mapping we own; nothing reads through it meanwhile.
    let rc = unsafe {
        libc::mprotect(
            theirs.as_ptr().cast(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, -1, "mprotect(PROT_WRITE) of a sealed page must fail");
    // The publisher's mapping made before the seal still writes, and the reader sees it.
    mine.words()[3].store(42, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        theirs.words()[3].load(std::sync::atomic::Ordering::SeqCst),
        42
    );
    // And write(2) through the fd is refused too.
    // SAFETY: a valid buffer and our own fd.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
    assert_eq!(n, -1);
}

#[test]
fn pages_that_a_peer_could_resize_or_of_the_wrong_size_are_refused() {
    // An unsealed memfd (what a hostile publisher might send).
    let plain = os::memfd("plain").unwrap();
    // SAFETY: plain syscall on our own fd.
    assert_eq!(
        unsafe { libc::ftruncate(plain.as_raw_fd(), PAGE as libc::off_t) },
        0
    );
    let err = os::check_shared_words_file(plain.as_fd(), PAGE).unwrap_err();
    assert!(err.to_string().contains("sealed"), "{err}");
    // Sealed, but not a page.
    let small = os::shared_words_file("small", 64).unwrap();
    let err = os::check_shared_words_file(small.as_fd(), PAGE).unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
    // Not a regular file at all.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(os::check_shared_words_file(a.as_fd(), PAGE).is_err());
}

#[test]
fn an_empty_mapping_is_refused() {
    let fd = os::shared_words_file("empty", PAGE).unwrap();
    assert!(SharedMapping::map(fd.as_fd(), 0, false).is_err());
}

#[test]
fn a_sleeper_on_a_read_only_mapping_is_woken_across_mappings() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};
    let fd = os::shared_words_file("futex", PAGE).unwrap();
    let writer = SharedMapping::map(fd.as_fd(), PAGE, true).unwrap();
    os::seal_future_writes(fd.as_fd()).unwrap();
    let reader = SharedMapping::map(fd.as_fd(), PAGE, false).unwrap();
    // A value that differs: no sleep at all.
    writer.words()[4].store(7, SeqCst);
    let t = Instant::now();
    os::futex_wait(&reader.words()[4], 6, Duration::from_secs(5)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    // Nobody wakes it: the timeout.
    let t = Instant::now();
    os::futex_wait(&reader.words()[4], 7, Duration::from_millis(50)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(40));
    // Woken through the other mapping (another "process"'s address for the same page).
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            writer.words()[4].fetch_add(1, SeqCst);
            os::futex_wake(&writer.words()[4]).unwrap();
        });
        let t = Instant::now();
        while reader.words()[4].load(SeqCst) == 7 {
            os::futex_wait(&reader.words()[4], 7, Duration::from_secs(10)).unwrap();
            assert!(t.elapsed() < Duration::from_secs(5), "never woken");
        }
    });
}
