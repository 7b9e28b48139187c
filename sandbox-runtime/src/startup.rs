//! Finding out whether jobsup started this process, and taking over the protocol pipes.

use std::env;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use jobsup_protocol::{
    Codec, DEFAULT_MAX_FRAME, ENV_MAX_FRAME, ENV_PROTOCOL, JOB_FD, MIN_PROTOCOL_VERSION, RESULT_FD,
};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Why the runtime cannot serve jobs in this process.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// Run by hand, or by something other than jobsup.
    #[error(
        "{program}: this is a jobsup processor; it serves jobs sent by jobsup and cannot be run \
         on its own ({missing})\nrun it as: jobsup run -- {program}"
    )]
    NotUnderJobsup {
        /// How the process was invoked (argv[0]).
        program: String,
        /// What showed that jobsup is not on the other end.
        missing: String,
    },
    /// Started by a jobsup that speaks another protocol version.
    #[error(
        "{program}: protocol version mismatch: jobsup speaks versions up to {theirs}, this \
         processor (jobsup-runtime) needs version {ours} or later; rebuild it against the \
         jobsup it runs under"
    )]
    Version {
        /// How the process was invoked (argv[0]).
        program: String,
        /// The lowest version this runtime speaks.
        ours: u32,
        /// What jobsup put in the environment.
        theirs: String,
    },
    /// The frame limit in the environment is not a number of bytes.
    #[error("{program}: {ENV_MAX_FRAME}={value:?} is not a frame size in bytes")]
    MaxFrame {
        /// How the process was invoked (argv[0]).
        program: String,
        /// What jobsup put in the environment.
        value: String,
    },
}

/// The two protocol pipes, owned, and the codec both ends agreed on.
#[derive(Debug)]
pub(crate) struct Link {
    /// fd 3: requests from the supervisor.
    pub(crate) requests: File,
    /// fd 4: frames to the supervisor.
    pub(crate) replies: File,
    /// The codec, with jobsup's frame limit.
    pub(crate) codec: Codec,
}

/// Set once fds 3 and 4 are owned by a `File`, so they are never owned twice.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Checks the environment jobsup sets up and takes ownership of fds 3 and 4.
///
/// # Panics
///
/// If called a second time in the same process: the pipes have one owner.
pub(crate) fn connect() -> Result<Link, StartError> {
    let program = program_name();
    let Some(version) = env::var_os(ENV_PROTOCOL) else {
        return Err(StartError::NotUnderJobsup {
            program,
            missing: format!("{ENV_PROTOCOL} is not set"),
        });
    };
    for fd in [JOB_FD, RESULT_FD] {
        if !fd_is_open(fd) {
            return Err(StartError::NotUnderJobsup {
                program,
                missing: format!("{ENV_PROTOCOL} is set but fd {fd} is not open"),
            });
        }
    }
    let version = version.to_string_lossy();
    // The variable is jobsup's highest version: any at or above our lowest leaves a version
    // both speak (jobsup checks its own lowest against the hello).
    if !version
        .trim()
        .parse::<u32>()
        .is_ok_and(|v| v >= MIN_PROTOCOL_VERSION)
    {
        return Err(StartError::Version {
            program,
            ours: MIN_PROTOCOL_VERSION,
            theirs: version.into_owned(),
        });
    }
    let max_frame = match env::var_os(ENV_MAX_FRAME) {
        None => DEFAULT_MAX_FRAME,
        Some(value) => parse_max_frame(&value).ok_or_else(|| StartError::MaxFrame {
            program: program.clone(),
            value: value.to_string_lossy().into_owned(),
        })?,
    };
    assert!(
        !CLAIMED.swap(true, Ordering::SeqCst),
        "jobsup-runtime: the protocol pipes were already taken over by an earlier call"
    );
    // SAFETY: both fds are open (checked above), and by the protocol's contract they belong
    // to the runtime; CLAIMED guarantees that no other `File` in this process owns them.
    let (requests, replies) = unsafe { (File::from_raw_fd(JOB_FD), File::from_raw_fd(RESULT_FD)) };
    // Programs the handler starts must not inherit the pipes: a grandchild holding fd 4
    // open would hide this worker's death from the supervisor, and one reading fd 3 would
    // steal its requests.
    for file in [&requests, &replies] {
        let _ = fcntl(file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Ok(Link {
        requests,
        replies,
        codec: Codec::new(max_frame),
    })
}

fn program_name() -> String {
    env::args_os()
        .next()
        .map(|arg| arg.to_string_lossy().into_owned())
        .unwrap_or_else(|| "<path>".to_owned())
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed fd it fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn parse_max_frame(value: &OsString) -> Option<u32> {
    value.to_str()?.trim().parse().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_frame_must_be_a_positive_number() {
        assert_eq!(parse_max_frame(&"1048576".into()), Some(1 << 20));
        assert_eq!(parse_max_frame(&" 42\n".into()), Some(42));
        assert_eq!(parse_max_frame(&"0".into()), None);
        assert_eq!(parse_max_frame(&"64MiB".into()), None);
        assert_eq!(parse_max_frame(&"99999999999".into()), None);
    }

    #[test]
    fn messages_say_how_to_run_and_name_both_versions() {
        let e = StartError::NotUnderJobsup {
            program: "./echo".into(),
            missing: "JOBSUP_PROTOCOL is not set".into(),
        };
        assert!(e.to_string().contains("jobsup run -- ./echo"), "{e}");
        let e = StartError::Version {
            program: "./echo".into(),
            ours: MIN_PROTOCOL_VERSION,
            theirs: "1".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("up to 1") && msg.contains(&format!("version {MIN_PROTOCOL_VERSION}"))
        );
    }
}
