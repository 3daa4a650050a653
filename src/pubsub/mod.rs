//! Channels: zero-copy publish/subscribe of GPU frames across processes and pods.
#![allow(missing_docs)]

pub(crate) mod layout;
pub mod protocol;

/// What the publisher does when a subscriber is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// No frame is lost: `loan` waits (up to its timeout) until every live subscriber has
    /// received and released the oldest frame.
    #[default]
    Block,
    /// The publisher never waits for a slow subscriber: it overwrites the oldest frame that no
    /// subscriber holds, and a subscriber that falls behind skips frames (it is told how many).
    DropOldest,
}
