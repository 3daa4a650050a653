//! The rendezvous socket's framing: small typed messages over a Unix stream socket, one of
//! which may carry a file descriptor (`SCM_RIGHTS`).
//!
//! A frame is a 12-byte header (magic `CIPM`, kind, payload length, little-endian) and at most
//! [`MAX_PAYLOAD`] bytes. The reader refuses what does not fit: an unknown magic or kind, a huge
//! length, more descriptors than the message may carry, truncated control data. Every
//! descriptor it receives is an [`OwnedFd`], so whatever it refuses is closed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::os;

/// The first four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CIPM";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 4096;

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Peer → service: protocol version (u32) and the name asked for (see `service::hello`).
    Hello = 1,
    /// Exporter → consumer: the descriptor, with the fd for the fd transport.
    Offer = 2,
    /// Exporter → consumer: why it refuses (UTF-8).
    Refuse = 3,
    /// Exporter → consumer: the buffer now holds this frame (u64).
    Ready = 4,
    /// Service → peer: it is full, or the peer's share is taken; try again later (UTF-8 text).
    Busy = 5,
    /// Channel publisher → subscriber: the channel's configuration, with the channel page's fd.
    Welcome = 6,
    /// Channel publisher → subscriber: the subscriber's own control page's fd (no payload).
    Page = 7,
    /// Exporter → consumer: not the buffer the consumer's hello expects; the descriptor of the
    /// one served (no fd, no lease).
    Mismatch = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Offer,
            3 => Kind::Refuse,
            4 => Kind::Ready,
            5 => Kind::Busy,
            6 => Kind::Welcome,
            7 => Kind::Page,
            8 => Kind::Mismatch,
            _ => return None,
        })
    }
}

/// A received frame.
#[derive(Debug)]
pub struct Message {
    /// What it says.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The descriptors that came with it (only an offer may carry one).
    pub fds: Vec<OwnedFd>,
}

/// Encodes a frame; a payload over [`MAX_PAYLOAD`] bytes is an `InvalidInput` error.
pub fn frame(kind: Kind, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {kind:?} payload of {} bytes is over MAX_PAYLOAD ({MAX_PAYLOAD})",
                payload.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Sends one frame, with `fd` attached to its first byte. The socket's write timeout bounds it.
pub fn send(
    stream: &UnixStream,
    kind: Kind,
    payload: &[u8],
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = frame(kind, payload)?;
    let mut sent = 0;
    while sent < bytes.len() {
        let fds: Vec<_> = if sent == 0 {
            fd.into_iter().collect()
        } else {
            Vec::new()
        };
        let n = os::send_with_fds(stream.as_fd(), &bytes[sent..], &fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket accepted no bytes",
            ));
        }
        sent += n;
    }
    Ok(())
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// The peer broke the protocol (what, in words).
    Protocol(String),
    /// The socket failed.
    Io(io::Error),
}

impl ReadError {
    /// As a crate error, naming the peer.
    pub fn into_error(self, peer: &str) -> Error {
        match self {
            ReadError::Closed => Error::Protocol {
                peer: peer.to_string(),
                detail: "the peer closed the connection".into(),
            },
            ReadError::Protocol(detail) => Error::Protocol {
                peer: peer.to_string(),
                detail,
            },
            ReadError::Io(e) => Error::io(format!("reading from {peer}"), e),
        }
    }
}

/// Accumulates bytes and descriptors from a socket and cuts them into frames. Works with
/// blocking and non-blocking sockets alike.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl FrameReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads what the socket has (one `recvmsg`). `Ok(false)` when it had nothing (would block).
    pub fn fill(&mut self, stream: &UnixStream) -> std::result::Result<bool, ReadError> {
        let mut chunk = [0u8; 2048];
        let got = match os::recv_with_fds(stream.as_fd(), &mut chunk) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                return Err(ReadError::Protocol(format!(
                    "receiving a message failed: {e}{}",
                    os::fd_limit_hint(&e)
                )))
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        self.fds.extend(got.fds);
        if got.control_truncated {
            return Err(ReadError::Protocol(
                "control data truncated: the peer sent more file descriptors than allowed, or \
                 this process could not take one (RLIMIT_NOFILE reached: raise it, e.g. \
                 `ulimit -n`, or close descriptors)"
                    .into(),
            ));
        }
        if self.fds.len() > 1 {
            return Err(ReadError::Protocol(format!(
                "the peer sent {} file descriptors; at most one is expected",
                self.fds.len()
            )));
        }
        if got.bytes == 0 {
            return Err(if self.buf.is_empty() && self.fds.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Protocol(
                    "the peer closed the connection in the middle of a message".into(),
                )
            });
        }
        self.buf.extend_from_slice(&chunk[..got.bytes]);
        Ok(true)
    }

    /// Takes the next complete frame, if one is buffered. A frame other than an offer, a
    /// welcome or a page that came with descriptors is refused (and the descriptors closed).
    pub fn take(&mut self) -> std::result::Result<Option<Message>, ReadError> {
        if self.buf.len() < HEADER_LEN {
            if !self.buf.is_empty()
                && self.buf[..self.buf.len().min(4)] != FRAME_MAGIC[..self.buf.len().min(4)]
            {
                return Err(ReadError::Protocol("bad frame magic".into()));
            }
            return Ok(None);
        }
        if self.buf[..4] != FRAME_MAGIC {
            return Err(ReadError::Protocol(format!(
                "bad frame magic {:02x?}",
                &self.buf[..4]
            )));
        }
        let kind = Kind::from_u8(self.buf[4])
            .ok_or_else(|| ReadError::Protocol(format!("unknown message kind {}", self.buf[4])))?;
        let len = u32::from_le_bytes(self.buf[8..12].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ReadError::Protocol(format!(
                "message of {len} bytes announced; at most {MAX_PAYLOAD} are allowed"
            )));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        let fds = std::mem::take(&mut self.fds);
        if !fds.is_empty() && !matches!(kind, Kind::Offer | Kind::Welcome | Kind::Page) {
            return Err(ReadError::Protocol(format!(
                "a {kind:?} message came with {} file descriptor(s)",
                fds.len()
            )));
        }
        Ok(Some(Message { kind, payload, fds }))
    }

    /// Reads one frame, waiting at most `timeout`.
    pub fn read_within(
        &mut self,
        stream: &UnixStream,
        timeout: Duration,
        peer: &str,
    ) -> Result<Message> {
        let deadline = crate::deadline::after(timeout);
        loop {
            if let Some(m) = self.take().map_err(|e| e.into_error(peer))? {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = os::wait_readable(stream.as_fd(), left)
                .map_err(|e| Error::io(format!("waiting for {peer}"), e))?;
            if !ready {
                return Err(Error::Timeout {
                    what: format!("a message from {peer}"),
                    waited: timeout,
                });
            }
            self.fill(stream).map_err(|e| e.into_error(peer))?;
        }
    }
}
