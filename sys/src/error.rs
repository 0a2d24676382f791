//! The crate's error type: every variant names the operation and the device or namespace.

use std::io;

/// Errors from the system-call wrappers. The message names the operation and what it was applied
/// to, e.g. `TUNSETIFF eth0 in /var/run/netns/x: Operation not permitted (os error 1)`.
///
/// The OS error is part of the message and deliberately not reported again as `source()`: an
/// error chain printed with anyhow's `{:#}` would otherwise repeat it. [`Error::raw_os_error`]
/// gives the errno.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{op}: {cause}")]
    Io {
        /// The operation and its target ("TUNSETIFF eth0 in /var/run/netns/x").
        op: String,
        cause: io::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("netlink {request}: {cause}{}", ext.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Netlink {
        /// The request and its target ("RTM_NEWADDR 10.255.1.2/32 dev eth0 in /var/run/netns/x").
        request: String,
        cause: io::Error,
        /// The kernel's extended-ack message, if it sent one.
        ext: Option<String>,
    },
    /// An argument was rejected before any system call was made.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The argument ("interface name").
        what: &'static str,
        /// Why it was rejected.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, cause: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            cause,
        }
    }

    pub(crate) fn last_os(op: impl Into<String>) -> Self {
        Self::io(op, io::Error::last_os_error())
    }

    /// The errno behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { cause, .. } | Error::Netlink { cause, .. } => cause.raw_os_error(),
            Error::Invalid { .. } => None,
        }
    }

    /// Whether this error means "no such device / namespace / entry".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Where an operation ran: " in PATH" for a namespace, "" for the caller's own.
pub(crate) fn in_ns(netns: Option<&std::path::Path>) -> String {
    match netns {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}
