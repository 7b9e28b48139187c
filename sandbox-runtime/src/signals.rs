//! SIGTERM as a cleanup request.

use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::thread;

use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;

use crate::control::{Controller, Event};

/// Reports every SIGTERM to the state machine, from a thread of its own.
///
/// A SIGTERM that the program (or whoever started it) already ignores stays ignored: that
/// was a deliberate choice, and installing a handler would undo it.
pub(crate) fn forward_sigterm(events: Controller) -> io::Result<()> {
    if sigterm_is_ignored() {
        return Ok(());
    }
    let mut signals = Signals::new([SIGTERM])?;
    thread::Builder::new()
        .name("jobsup-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                events.send(Event::Terminate);
            }
        })?;
    Ok(())
}

fn sigterm_is_ignored() -> bool {
    let mut current = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action makes sigaction only read the current one into `current`,
    // which is a properly sized, writable sigaction.
    let rc = unsafe { libc::sigaction(SIGTERM, ptr::null(), current.as_mut_ptr()) };
    // SAFETY: zeroed is a valid sigaction, and on success the kernel filled it in.
    rc == 0 && unsafe { current.assume_init() }.sa_sigaction == libc::SIG_IGN
}
