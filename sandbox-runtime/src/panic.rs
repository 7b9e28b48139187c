//! Turning a caught panic into words.

use std::any::Any;

/// The message a panic was raised with, read from its payload rather than from a panic hook,
/// so the processor's own hook (or the default one) is left alone.
///
/// Takes the payload itself, not the `Box` around it: a `&Box<dyn Any>` is itself a
/// `&dyn Any` and would never downcast to a string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic payload that is not a string"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, panic_any};

    fn caught(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = catch_unwind(f).unwrap_err();
        panic_message(&*payload).to_owned()
    }

    #[test]
    fn static_str_payload() {
        assert_eq!(caught(|| panic!("boom")), "boom");
    }

    #[test]
    fn formatted_payload() {
        let n = 7;
        assert_eq!(caught(move || panic!("job {n} broke")), "job 7 broke");
    }

    #[test]
    fn non_string_payload() {
        assert_eq!(
            caught(|| panic_any(42_u8)),
            "a panic payload that is not a string"
        );
    }
}
