//! The timer a running job's deadlines wait on, precise to microseconds.
//!
//! tokio's timers have a resolution of one millisecond and round a deadline up to the next
//! tick, and its driver waits in `epoll_wait`, whose timeout is in milliseconds too: a
//! deadline fired 1 to 2 ms late on an idle machine, most of the hard-kill lateness left
//! once the kill itself took microseconds. A `timerfd` armed at the deadline's absolute
//! instant is a kernel high-resolution timer; it wakes the runtime's `epoll_wait` through
//! its readiness, at that instant. Where one cannot be made, tokio's sleep is used.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::{clock_gettime, ClockId as Clock};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// `TimerFd` as `AsyncFd` wants it.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One worker's deadline timer: armed for one instant at a time.
pub struct DeadlineTimer {
    fd: Option<AsyncFd<Fd>>,
    /// The instant it is armed for.
    armed: Option<Instant>,
}

impl DeadlineTimer {
    /// A timer on `CLOCK_MONOTONIC` (the clock of `Instant`), or, failing that, none: then
    /// [`DeadlineTimer::until`] is tokio's sleep.
    pub fn new() -> DeadlineTimer {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .ok()
        .and_then(|fd| {
            // SAFETY: the AsyncFd owns the timer, whose fd stays open and names the same
            // file for as long as it lives.
            unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) }.ok()
        });
        DeadlineTimer { fd, armed: None }
    }

    /// Resolves at `at` (never, for `None`). Cancel-safe: the timer stays armed for the
    /// next call, which re-arms it only for another instant.
    pub async fn until(&mut self, at: Option<Instant>) {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        let Some(fd) = &self.fd else {
            return tokio::time::sleep_until(at).await;
        };
        if self.armed != Some(at) {
            match absolute(at) {
                Some(when) => {
                    let set = fd.get_ref().0.set(
                        Expiration::OneShot(when),
                        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
                    );
                    if set.is_err() {
                        return tokio::time::sleep_until(at).await;
                    }
                    self.armed = Some(at);
                }
                None => return tokio::time::sleep_until(at).await,
            }
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            // Reading the expiry count disarms the readiness; EAGAIN means it was stale.
            match ready.try_io(|inner| inner.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(Ok(())) => {
                    self.armed = None;
                    return;
                }
                // Never early: an error it should not give falls back to tokio's sleep.
                Ok(Err(_)) => {
                    self.armed = None;
                    return tokio::time::sleep_until(at).await;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        DeadlineTimer::new()
    }
}

/// `at` on `CLOCK_MONOTONIC`, as `timerfd_settime` takes it: now on that clock plus what is
/// left until `at` (an instant already past is now, which fires at once).
fn absolute(at: Instant) -> Option<TimeSpec> {
    let left = at.saturating_duration_since(Instant::now());
    let now = clock_gettime(Clock::CLOCK_MONOTONIC).ok()?;
    let now = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32);
    Some(TimeSpec::from_duration(now + left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn it_never_resolves_before_its_instant_and_can_be_moved() {
        block_on(async {
            let mut timer = DeadlineTimer::new();
            assert!(timer.fd.is_some(), "a timerfd on this kernel");
            for ms in [0_u64, 3, 1, 20] {
                let at = Instant::now() + Duration::from_millis(ms);
                timer.until(Some(at)).await;
                assert!(Instant::now() >= at, "fired before {ms} ms");
            }
            // Armed for one instant, then moved before it fires: the new one holds.
            let soon = Instant::now() + Duration::from_secs(5);
            let later = Instant::now() + Duration::from_millis(30);
            let first = tokio::select! {
                biased;
                () = timer.until(Some(soon)) => true,
                () = std::future::ready(()) => false,
            };
            assert!(!first, "not yet due");
            timer.until(Some(later)).await;
            assert!(Instant::now() >= later);
        });
    }

    #[test]
    fn no_instant_is_never() {
        block_on(async {
            let mut timer = DeadlineTimer::new();
            let waited = tokio::time::timeout(Duration::from_millis(20), timer.until(None)).await;
            assert!(waited.is_err());
        });
    }
}
