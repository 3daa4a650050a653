//! The peer's side of a service: check the socket, connect, check who answers, say hello, and
//! retry while the service is busy — all within one deadline.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::deadline::Pause;
use crate::error::{Error, Result};
use crate::ipc::framing::{self, FrameReader, Kind, Message};
use crate::ipc::rendezvous::{Names, RendezvousDir};
use crate::os;

use super::{encode_hello, Expected};

/// A connection a service answered: the stream, its reader (holding anything read after the
/// first message), and that first message (an offer, a welcome).
#[derive(Debug)]
pub(crate) struct Answered {
    pub stream: UnixStream,
    pub reader: FrameReader,
    pub first: Message,
}

/// Who must be on the other end: `check(uid, role)` returns an error for a uid that may not
/// own the socket file (`role` "owns the socket file") or serve it ("serves the socket").
pub(crate) type UidCheck<'a> = &'a dyn Fn(u32, &str) -> Result<()>;

/// Connects to `names`' socket in `dir` and says hello, until `deadline`:
/// - the socket entry must be a socket (not a link, not a file) owned by a uid `check`
///   accepts: a socket planted by someone else is refused before any connection;
/// - the process answering (`SO_PEERCRED`) must be of a uid `check` accepts;
/// - the hello names `names.name`, so a socket renamed into this name refuses, and the buffer
///   the caller expects (`expect`: the descriptor it read; an exporter of another buffer or
///   generation answers `Mismatch` without granting a lease);
/// - a missing or not-yet-listening socket, a full backlog and a "busy" answer are retried;
///   a refusal is [`Error::Refused`]; the time running out while busy is [`Error::Busy`].
///
/// `expecting` names the first message in errors ("the offer", "the welcome").
pub(crate) fn connect(
    dir: &RendezvousDir,
    names: &Names,
    check: UidCheck<'_>,
    expect: Option<Expected>,
    deadline: Instant,
    timeout: Duration,
    expecting: &str,
) -> Result<Answered> {
    let peer = format!("the service at {}", names.socket.display());
    let mut pause = Pause::polling();
    let mut busy_pause = Pause::new(Duration::from_millis(5), Duration::from_millis(100));
    // What the service said when it was last busy: once the time is up, that is the error.
    let mut busy: Option<String> = None;
    let busy_error = |detail: String| Error::Busy {
        path: names.socket.clone(),
        detail,
    };
    loop {
        let stream = match connect_once(dir, names, check, deadline) {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Not there or not listening yet.
                if !pause.sleep(deadline) {
                    if let Some(detail) = busy {
                        return Err(busy_error(detail));
                    }
                    return Err(Error::Timeout {
                        what: format!(
                            "a publisher to accept connections at {} (has the producer exited, \
                             or is it overloaded?)",
                            names.socket.display()
                        ),
                        waited: timeout,
                    });
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| Error::io("setting a socket timeout", e))?;
        // A service that refuses us may close before our hello arrives; its refusal is still
        // in our receive buffer, so read before reporting a failed send.
        let hello = framing::send(
            &stream,
            Kind::Hello,
            &encode_hello(&names.name, expect),
            None,
        );
        let mut reader = FrameReader::new();
        let first = match reader.read_within(&stream, left, &peer) {
            Ok(m) => m,
            Err(e) => {
                return Err(match (hello, e) {
                    (_, Error::Timeout { .. }) if busy.is_some() => {
                        busy_error(busy.unwrap_or_default())
                    }
                    (Err(he), _) => Error::io(format!("sending hello to {peer}"), he),
                    (Ok(()), Error::Timeout { .. }) => Error::Timeout {
                        what: format!("{expecting} of {peer}"),
                        waited: timeout,
                    },
                    (Ok(()), other) => other,
                })
            }
        };
        match first.kind {
            Kind::Busy => {
                let detail = String::from_utf8_lossy(&first.payload).into_owned();
                if !busy_pause.sleep(deadline) {
                    return Err(busy_error(detail));
                }
                busy = Some(detail);
            }
            Kind::Refuse => {
                return Err(Error::Refused {
                    path: names.socket.clone(),
                    reason: String::from_utf8_lossy(&first.payload).into_owned(),
                })
            }
            _ => {
                return Ok(Answered {
                    stream,
                    reader,
                    first,
                })
            }
        }
    }
}

/// One attempt: `Ok(None)` when there is nothing to connect to yet (no socket, nothing
/// listening, a full backlog).
fn connect_once(
    dir: &RendezvousDir,
    names: &Names,
    check: UidCheck<'_>,
    deadline: Instant,
) -> Result<Option<UnixStream>> {
    let sock_name = names.socket_name();
    let untrusted = |reason: String| Error::UntrustedExporter {
        path: names.socket.clone(),
        reason,
    };
    // The entry as it is, links not followed: in a sticky directory no one else can replace
    // the publisher's own socket afterwards, so what is checked here is what is connected to.
    let st = match dir.stat_entry(&sock_name) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("stat {}", names.socket.display()), e)),
    };
    if !st.is_socket() {
        return Err(untrusted(format!(
            "{} of uid {} is at the socket's path, not a socket: not connecting through it \
             (someone who can write in {} planted it)",
            st.kind_name(),
            st.uid,
            names.dir.display()
        )));
    }
    if st.nlink != 1 {
        return Err(untrusted(format!(
            "the socket has {} hard links: a link someone made could stand in for another \
             exporter's socket; not connecting through it (keep fs.protected_hardlinks = 1)",
            st.nlink
        )));
    }
    check(st.uid, "owns the socket file")?;
    let left = deadline.saturating_duration_since(Instant::now());
    let stream = match os::connect_unix(&dir.proc_path(&sock_name), left) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::WouldBlock
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::io(
                format!(
                    "connecting to {}{}",
                    names.socket.display(),
                    os::fd_limit_hint(&e)
                ),
                e,
            ))
        }
    };
    let server = os::peer_credentials(stream.as_fd()).map_err(|e| {
        Error::io(
            format!("SO_PEERCRED of the service at {}", names.socket.display()),
            e,
        )
    })?;
    check(server.uid, "serves the socket")?;
    Ok(Some(stream))
}
