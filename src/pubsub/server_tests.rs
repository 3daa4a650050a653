//! The channel's server thread without a GPU: a real listener, real control pages (memfds,
//! never registered with the driver), and raw clients speaking the socket protocol the way a
//! careless or hostile subscriber would.
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::ipc::framing::{FrameReader, Kind};
use crate::ipc::rendezvous::Names;
use crate::ipc::{ExportOptions, DESCRIPTOR_LEN};
use crate::os;
use crate::pubsub::page::Page;
use crate::pubsub::wire::Welcome;
use crate::pubsub::Policy;
use crate::service::{Claim, Service, Traffic};

const SECS: Duration = Duration::from_secs(10);

/// A channel service serving `<dir>/frames.sock`, as `Publisher::create` starts it.
struct Running {
    dir: PathBuf,
    sock: PathBuf,
    shared: Arc<Shared>,
    service: Option<Service>,
}

impl Running {
    fn start(max_subscribers: usize) -> Running {
        let r: [u8; 6] = os::random_bytes().unwrap();
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("cuda-ipc-server-test-{hex}"));
        let names = Names::for_path(dir.join("frames")).unwrap();
        let claim = Claim::take(&names, None).unwrap();
        let shared = Arc::new(Shared::default());
        let chan = Page::create("cuda-ipc test channel").unwrap();
        chan.words()[MAGIC].store(MAGIC_VALUE, SeqCst);
        let welcome = Welcome {
            slots: 4,
            max_subscribers,
            policy: Policy::Block,
            frame_len: 16,
            stride: 64,
            elem_size: 4,
            type_tag: 1,
            max_held: 2,
            id: 0,
            newest: 0,
            announced: 0,
            instance: 7,
            pool: [0; DESCRIPTOR_LEN],
        };
        let admission = Admission {
            shared: Arc::clone(&shared),
            chan: Arc::new(chan),
            welcome,
            name: "frames".into(),
        };
        let options = ExportOptions::default().service(max_subscribers, Traffic::HangUp);
        let service = Service::start(claim, options, admission, "test channel").unwrap();
        Running {
            sock: names.socket.clone(),
            dir,
            shared,
            service: Some(service),
        }
    }

    fn stats(&self) -> crate::service::ServiceStats {
        self.service.as_ref().unwrap().stats().get()
    }

    /// Waits until `pred` holds for the roster.
    fn wait_for(&self, what: &str, pred: impl Fn(&Roster) -> bool) {
        let t = Instant::now();
        while !pred(&self.shared.lock()) {
            let r = self.shared.lock();
            assert!(
                t.elapsed() < SECS,
                "{what}: live {}, retired {}, joined {}, left {}, service {:?}",
                r.live.len(),
                r.retired.len(),
                r.joined,
                r.left,
                self.stats()
            );
            drop(r);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.service.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects, says hello and reads the first message (a welcome, a refusal, "busy").
fn connect(sock: &std::path::Path) -> (UnixStream, FrameReader, Kind) {
    let s = UnixStream::connect(sock).unwrap();
    // A full service may answer "busy" and close before the hello is sent: read anyway.
    let _ = framing::send(
        &s,
        Kind::Hello,
        &crate::service::encode_hello("frames", None),
        None,
    );
    let mut r = FrameReader::new();
    let m = r.read_within(&s, SECS, "server").unwrap();
    (s, r, m.kind)
}

/// Connects, takes the welcome and its own page, as a subscriber does.
fn join(sock: &std::path::Path) -> UnixStream {
    let (s, mut r, kind) = connect(sock);
    assert_eq!(kind, Kind::Welcome);
    let page = r.read_within(&s, SECS, "server").unwrap();
    assert_eq!((page.kind, page.fds.len()), (Kind::Page, 1));
    s
}

#[test]
fn subscribers_that_come_and_go_leave_no_pages_behind_while_the_publisher_does_not_loan() {
    // A subscriber that crashes and restarts in a loop (or a hostile one of an allowed uid)
    // while the publisher waits for subscribers, or publishes rarely. Every admission creates a
    // control page (a memfd and a mapping); a page that was never registered with the driver
    // has nothing queued against it and can be freed when its subscriber leaves. Today retired
    // pages are reaped only inside `Publisher::loan`, so they pile up: one fd and one 4 KiB
    // mapping per connection, until the publisher's fds run out.
    let max = 4;
    let server = Running::start(max);
    let cycles = 40u64;
    for i in 1..=cycles {
        drop(join(&server.sock));
        server.wait_for("the subscriber counted as gone", |r| r.left == i);
    }
    let r = server.shared.lock();
    assert_eq!((r.joined, r.live.len()), (cycles, 0));
    assert!(
        r.retired.len() <= max,
        "{} pages of subscribers that left (none ever registered) are still kept, each an open \
         memfd and a mapping: they are freed only by the publisher's next loan",
        r.retired.len()
    );
}

#[test]
fn a_full_channel_refuses_and_a_subscriber_sending_bytes_is_dropped() {
    use std::io::Write;
    let server = Running::start(2);
    // Two subscribers that take their pages and then stall (never read, never close).
    let a = join(&server.sock);
    let mut b = join(&server.sock);
    server.wait_for("two subscribers admitted", |r| r.live.len() == 2);
    // The channel is full: a third is told so ("busy": it may retry), and gets no page.
    let (c, mut reader, kind) = connect(&server.sock);
    assert_eq!(kind, Kind::Busy);
    // Then the connection ends (closed, or reset: the server never read its hello).
    assert!(matches!(
        reader.read_within(&c, Duration::from_millis(200), "server"),
        Err(crate::Error::Protocol { .. } | crate::Error::Io { .. })
    ));
    assert_eq!(server.stats().busy, 1);
    // A subscriber that sends anything is dropped at once; the stalled one stays.
    b.write_all(b"hello").unwrap();
    server.wait_for("the chatty subscriber dropped", |r| {
        r.live.len() == 1 && r.left == 1
    });
    // Its slot is free again: a newcomer is admitted.
    let _d = join(&server.sock);
    server.wait_for("a newcomer admitted", |r| r.live.len() == 2);
    drop(a);
}

#[test]
fn a_subscriber_reconnecting_at_once_is_not_refused_as_over_the_limit() {
    // One subscriber allowed. It leaves and comes back at once (a restart, or subscribing
    // again after an error). The server accepts every pending connection before it looks at
    // the closed ones, so the newcomer can be refused with "already has its maximum of 1
    // subscribers" although the only subscriber is gone.
    let server = Running::start(1);
    let mut refused = 0;
    for _ in 0..300 {
        let (s, mut r, kind) = connect(&server.sock);
        if kind == Kind::Welcome {
            r.read_within(&s, SECS, "server").unwrap();
        } else {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 300 reconnections refused as over max_subscribers = 1, though each came \
         after the previous subscriber had closed its connection"
    );
}

#[test]
fn one_process_holds_at_most_its_share_of_the_channel() {
    // Every connection here comes from this process: its share (max_per_process, 8 by
    // default) is all it gets, however many places the channel has.
    let server = Running::start(16);
    let members: Vec<UnixStream> = (0..8).map(|_| join(&server.sock)).collect();
    server.wait_for("eight admitted", |r| r.live.len() == 8);
    let (_s, _r, kind) = connect(&server.sock);
    assert_eq!(kind, Kind::Busy, "a ninth membership of one process");
    drop(members);
    server.wait_for("all gone", |r| r.live.is_empty());
    let _again = join(&server.sock);
}

#[test]
fn a_hello_trickled_a_byte_at_a_time_gives_way_to_a_newcomer() {
    use std::io::Write;
    // A full channel of connections that have sent part of their hello (a slowloris): a
    // newcomer takes the place of the oldest, instead of waiting for the handshake timeout.
    let server = Running::start(2);
    let hello = framing::frame(Kind::Hello, &crate::service::encode_hello("frames", None)).unwrap();
    let mut tricklers: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut s = UnixStream::connect(&server.sock).unwrap();
            s.write_all(&hello[..3]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let newcomer = join(&server.sock);
    server.wait_for("the newcomer admitted", |r| r.live.len() == 1);
    assert_eq!(server.stats().evicted, 1);
    // The evicted trickler was told so ("busy"), not left hanging.
    let mut told = 0;
    for s in &mut tricklers {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut r = FrameReader::new();
        if let Ok(m) = r.read_within(s, Duration::from_millis(200), "server") {
            assert_eq!(m.kind, Kind::Busy);
            told += 1;
        }
    }
    assert_eq!(told, 1);
    drop(newcomer);
}

#[test]
fn a_hello_for_another_name_or_version_is_refused() {
    let server = Running::start(4);
    for (payload, needle) in [
        (
            crate::service::encode_hello("weights", None),
            "serves \"frames\", not \"weights\"",
        ),
        (1u32.to_le_bytes().to_vec(), "protocol version 1"),
    ] {
        let s = UnixStream::connect(&server.sock).unwrap();
        framing::send(&s, Kind::Hello, &payload, None).unwrap();
        let m = FrameReader::new().read_within(&s, SECS, "server").unwrap();
        assert_eq!(m.kind, Kind::Refuse);
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        assert!(text.contains(needle), "{text}");
    }
    assert_eq!(server.shared.lock().live.len(), 0);
}
