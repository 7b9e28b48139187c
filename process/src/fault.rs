//! Panic messages, and the test-only fault points.
//!
//! With the `fault-injection` feature (for end-to-end tests only), [`fault`] panics at the
//! point that `JOBSUP_FAULT` names, so the paths that handle a bug inside jobsup are tested
//! for real; [`refused`] pretends the kernel lacks the facility it names.

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Test-only: panics when `JOBSUP_FAULT` names `point` (and, with `point:N`, on its Nth
/// visit). Compiled to nothing without the `fault-injection` feature.
#[inline]
pub fn fault(point: &str) {
    #[cfg(feature = "fault-injection")]
    injected::check(point);
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

/// Test-only: whether `JOBSUP_FAULT` names `point`, a facility of the kernel to pretend is
/// missing, so that the fallback for older kernels is tested for real. Always false
/// without the `fault-injection` feature.
#[inline]
pub fn refused(point: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    return injected::names(point);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = point;
        false
    }
}

#[cfg(feature = "fault-injection")]
mod injected {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static VISITS: AtomicU64 = AtomicU64::new(0);

    fn spec() -> &'static Option<(String, u64)> {
        SPEC.get_or_init(|| {
            let raw = std::env::var("JOBSUP_FAULT").ok()?;
            let (name, nth) = raw.split_once(':').unwrap_or((raw.as_str(), "1"));
            Some((name.to_string(), nth.parse().unwrap_or(1)))
        })
    }

    pub(super) fn names(point: &str) -> bool {
        spec().as_ref().is_some_and(|(name, _)| name == point)
    }

    pub(super) fn check(point: &str) {
        if let Some((name, nth)) = spec() {
            if name == point && VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
                panic!("fault injected at {point} (JOBSUP_FAULT)");
            }
        }
    }
}
