//! The one parser for every duration, size and signal that comes from outside: the command
//! line, the config file and each ndjson record go through the functions here, so a value
//! one of them refuses cannot slip in through another.
//!
//! Durations are humantime strings (`30s`, `1m30s`, `250ms`) or a bare number of seconds,
//! as in GNU `timeout` and systemd. Negative, NaN, infinite, or longer than
//! [`MAX_DURATION`] (100 years) is an error: past that, adding a duration to the clock could
//! overflow, and no job deadline means anything there anyway. Sizes are bytes, or a number
//! with a unit, up to [`MAX_SIZE`].

use std::time::Duration;

use nix::sys::signal::Signal;

/// The longest duration accepted anywhere: 100 years of 365.25 days, as humantime counts
/// a year (so `100y` itself is accepted).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The largest size accepted anywhere: 1 EiB.
pub const MAX_SIZE: u64 = 1 << 60;

/// Parses a duration: humantime (`30s`, `1m30s`, `250ms`), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return duration_from_secs(secs).map_err(|e| format!("{s:?} {e}"));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration ({e}); try 30s, 1m30s or 250ms"))?;
    within_max(d).map_err(|e| format!("{s:?} {e}"))
}

/// A number of seconds as a duration, refused when negative, not finite, or too long. The
/// error reads after the value: "is not ...".
pub fn duration_from_secs(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() || secs.is_infinite() {
        return Err("is not a number of seconds".into());
    }
    if secs < 0.0 {
        return Err("is negative; a duration must be 0 or more".into());
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(too_long());
    }
    // In range, so the conversion cannot panic.
    Ok(Duration::from_secs_f64(secs))
}

/// A whole number of seconds (a TOML integer) as a duration.
pub fn duration_from_int(secs: i64) -> Result<Duration, String> {
    match u64::try_from(secs) {
        Err(_) => Err("is negative; a duration must be 0 or more".into()),
        Ok(s) if s > MAX_DURATION.as_secs() => Err(too_long()),
        Ok(s) => Ok(Duration::from_secs(s)),
    }
}

fn within_max(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err(too_long())
    } else {
        Ok(d)
    }
}

fn too_long() -> String {
    "is too long: durations go up to 100 years".into()
}

/// Parses a size: bytes, or a number with a unit (`KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`,
/// `TB`, `TiB`; case does not matter). Zero is refused: no limit is ever zero bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size; try 4096, 64KiB or 10MB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("{s:?}: unknown unit {other:?}; try KiB, MB or GiB")),
    };
    size_from_f64(number * scale).map_err(|e| format!("{s:?} {e}"))
}

/// A number of bytes (from a TOML integer, say), refused when below 1 or above the maximum.
pub fn size_from_int(bytes: i64) -> Result<u64, String> {
    size_from_f64(bytes as f64)
}

fn size_from_f64(bytes: f64) -> Result<u64, String> {
    if !bytes.is_finite() || bytes < 1.0 {
        Err("is not a usable size: it must be at least 1 byte".into())
    } else if bytes > MAX_SIZE as f64 {
        Err("is too large: sizes go up to 1 EiB".into())
    } else {
        Ok(bytes as u64)
    }
}

/// A size for messages, in the largest binary unit it reaches: `100 MiB`, `1.5 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale {
            return if bytes.is_multiple_of(scale) {
                format!("{} {unit}", bytes / scale)
            } else {
                format!("{:.1} {unit}", bytes as f64 / scale as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// Parses a signal: `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal; try TERM, INT, HUP, USR1 or a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("banana").unwrap_err().contains("banana"));
    }

    #[test]
    fn out_of_range_durations_are_errors_not_panics() {
        for bad in [
            "-1", "-0.5", "1e20", "1e300", "1e19", "inf", "-inf", "NaN", "nan", "101y", "1e400",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(
            parse_duration("100y").is_ok(),
            "the maximum itself is accepted"
        );
        assert!(parse_duration(&MAX_DURATION.as_secs().to_string()).is_ok());
        assert!(parse_duration(&(MAX_DURATION.as_secs() + 1).to_string()).is_err());
        assert!(duration_from_int(-1).is_err());
        assert!(duration_from_int(i64::MAX).is_err());
        assert_eq!(duration_from_int(7), Ok(Duration::from_secs(7)));
        assert!(duration_from_secs(f64::MAX).is_err());
        assert!(duration_from_secs(f64::MIN_POSITIVE).is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5 kb"), Ok(1500));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("0.1").is_err());
        assert!(parse_size("1e20").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
        assert!(parse_size("-5").is_err());
        assert!(size_from_int(-1).is_err());
        assert!(size_from_int(i64::MAX).is_err());
        assert_eq!(format_size(100 << 20), "100 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1), "1 B");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("1"), Ok(Signal::SIGHUP));
        assert!(parse_signal("NOPE").unwrap_err().contains("NOPE"));
        assert!(parse_signal("99999999999").is_err());
    }
}
