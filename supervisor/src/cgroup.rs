//! Killing a worker's whole tree through cgroup v2, where the machine offers a writable
//! hierarchy: each worker runs in a cgroup of its own, and the hard kill writes
//! `cgroup.kill`, which the kernel applies to every process in it, whatever session,
//! group or environment it has.
//!
//! jobsup makes `jobsup-<pid>` under its own cgroup and one `w<worker>` under that per
//! worker; a worker joins its cgroup between fork and exec. Where none of this is possible
//! (no cgroup v2 mount, no write access), [`Cgroups::detect`] says so and the other
//! mechanisms (process group, subreaper tree walk, `--isolate pid`) do the work.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// jobsup's own part of the cgroup v2 hierarchy.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
}

/// One worker's cgroup.
#[derive(Debug)]
pub struct WorkerCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, ready for the child to join by writing "0".
    procs: CString,
}

impl Cgroups {
    /// Finds the cgroup v2 hierarchy and makes jobsup's directory in it; says why not.
    pub fn detect() -> Result<Cgroups, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        // Fields: ... mount-point ... - fstype source options
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process has no cgroup v2 path")?;
        let base = mount
            .join(own.trim_start_matches('/'))
            .join(format!("jobsup-{}", std::process::id()));
        fs::create_dir(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        if !base.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&base);
            return Err("the kernel has no cgroup.kill (Linux 5.14 or later needed)".into());
        }
        Ok(Cgroups { base })
    }

    /// Makes worker `id`'s cgroup.
    pub fn worker(&self, id: u64) -> io::Result<WorkerCgroup> {
        let dir = self.base.join(format!("w{id}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // A leftover from an earlier process of the same exec slot.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        Ok(WorkerCgroup { dir, procs })
    }

    /// Where jobsup's cgroups are.
    pub fn path(&self) -> &Path {
        &self.base
    }
}

impl Cgroups {
    /// Kills whatever is left in jobsup's cgroups and removes them (at the end of a run).
    pub fn remove_all(&self) {
        // Worker cgroups first: a cgroup with children cannot be removed.
        if let Ok(entries) = fs::read_dir(&self.base) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::write(e.path().join("cgroup.kill"), "1");
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.base);
    }
}

impl WorkerCgroup {
    /// Joins the calling process to this cgroup. Between fork and exec: async-signal-safe,
    /// and best effort (the other mechanisms still hold if it fails).
    ///
    /// # Safety
    /// Only open/write/close on a path prepared before fork.
    pub unsafe fn join(procs: &CString) {
        // SAFETY: see above.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }

    /// The path the child writes itself into.
    pub fn procs(&self) -> CString {
        self.procs.clone()
    }

    /// SIGKILL to every process in the cgroup.
    pub fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Removes the cgroup once empty (left for jobsup's exit if it is not yet).
    pub fn remove(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
}
