//! The rendezvous socket's protocol, written independently of the crate for tests that play a
//! hostile or fake peer: the Rust framing below and the same framing for the Python peers
//! ([`PY_WIRE`]). Every raw-protocol helper of the tests is here, so a protocol change is made
//! once.
//!
//! A frame is the magic `CIPM`, a kind byte, 3 zero bytes, the payload's length (u32,
//! little-endian) and the payload; a descriptor travels with the frame's first byte
//! (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::os;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CIPM";
/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 12;
/// The version a peer's hello announces (2: the hello names the name asked for, and channel
/// subscribers say hello too).
pub const PROTOCOL_VERSION: u32 = 2;

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Consumer → exporter.
    Hello = 1,
    /// Exporter → consumer: the descriptor (and the fd of the fd transport).
    Offer = 2,
    /// Why a peer is refused (UTF-8).
    Refuse = 3,
    /// Exporter → consumer: a ready notification.
    Ready = 4,
    /// Exporter → consumer: no free connection slot.
    Busy = 5,
    /// Channel publisher → subscriber: the channel's configuration, with the channel page.
    Welcome = 6,
    /// Channel publisher → subscriber: the subscriber's own page (no payload).
    Page = 7,
    /// Exporter → consumer: not the buffer the hello expects (the descriptor served).
    Mismatch = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        [
            Kind::Hello,
            Kind::Offer,
            Kind::Refuse,
            Kind::Ready,
            Kind::Busy,
            Kind::Welcome,
            Kind::Page,
            Kind::Mismatch,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
}

/// A frame's bytes.
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A peer's hello for `name` with no expected buffer, as a channel subscriber sends it: the
/// version (u32 LE), the expected buffer id (16 bytes) and generation (u64 LE), all zero, then
/// the name's bytes.
pub fn hello(name: &str) -> Vec<u8> {
    let mut payload = PROTOCOL_VERSION.to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 24]);
    payload.extend_from_slice(name.as_bytes());
    frame(Kind::Hello, &payload)
}

/// Sends one frame, with `fd` attached if given.
pub fn send(
    s: &UnixStream,
    kind: Kind,
    payload: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = frame(kind, payload);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let sent = os::send_with_fds(s.as_fd(), &bytes, &fds)?;
    if sent < bytes.len() {
        std::io::Write::write_all(&mut &*s, &bytes[sent..])?;
    }
    Ok(())
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    /// What it says.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

/// Reads exactly `buf.len()` bytes, collecting any descriptors that arrive with them.
fn read_exact_with_fds(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let (n, got) = os::recv_with_fds(s.as_fd(), &mut buf[filled..])?;
        fds.extend(got);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the peer closed after {filled} of {} bytes", buf.len()),
            ));
        }
        filled += n;
    }
    Ok(())
}

/// Reads one frame, waiting at most `timeout` for each part of it.
pub fn read_frame(s: &UnixStream, timeout: Duration) -> io::Result<Frame> {
    s.set_read_timeout(Some(timeout))?;
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    read_exact_with_fds(s, &mut header, &mut fds)?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if header[..4] != MAGIC {
        return Err(bad(format!("bad magic {:?}", &header[..4])));
    }
    let kind = Kind::from_u8(header[4]).ok_or_else(|| bad(format!("kind {}", header[4])))?;
    let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
    if len > 1 << 20 {
        return Err(bad(format!("a payload of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    read_exact_with_fds(s, &mut payload, &mut fds)?;
    Ok(Frame { kind, payload, fds })
}

/// A channel's welcome payload (a publisher's answer to a subscriber): version 1, 4 slots,
/// 16 subscribers, `Block`, frames of 16 `u32`s with a stride of 64, at most 2 held, subscriber
/// id 1, nothing published, instance 5, and an all-zero pool descriptor.
pub fn welcome_payload() -> Vec<u8> {
    let words: [u64; 13] = [
        1,
        4,
        16,
        0,
        16,
        64,
        4,
        cuda_ipc::ipc::TypeTag::of::<u32>().0,
        2,
        1,
        0,
        0,
        5,
    ];
    let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    b.extend_from_slice(&[0u8; cuda_ipc::ipc::DESCRIPTOR_LEN]);
    b
}

/// The same framing for the Python peers (prepended to their scripts by
/// [`python`](super::py::python)): `frame`, `read_frame`, the kinds, `hello(name)` and
/// `offer(descriptor)`.
pub const PY_WIRE: &str = r#"
HELLO, OFFER, REFUSE, READY, BUSY, WELCOME, PAGE, MISMATCH = 1, 2, 3, 4, 5, 6, 7, 8
PROTOCOL_VERSION = 2
def frame(kind, payload):
    return b"CIPM" + bytes([kind, 0, 0, 0]) + struct.pack("<I", len(payload)) + payload
def hello(name):
    return frame(HELLO, struct.pack("<I", PROTOCOL_VERSION) + bytes(24) + name.encode())
def offer(desc):
    return frame(OFFER, desc)
def read_frame(s):
    hdr = b""
    fds = []
    while len(hdr) < 12:
        data, f, _, _ = socket.recv_fds(s, 12 - len(hdr), 4)
        if not data:
            sys.exit("closed")
        hdr += data; fds += f
    n = struct.unpack("<I", hdr[8:12])[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return hdr[4], body, fds
"#;
