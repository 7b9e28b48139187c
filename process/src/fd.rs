//! File descriptors as the supervisor uses them: safe wrappers over the few calls it needs.

use std::io;
use std::os::fd::OwnedFd;

/// A pipe whose both ends are close-on-exec (a child gets its copies through dup2).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}
