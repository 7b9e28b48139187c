//! The file system a worker sees under `--isolate fs`, made in its mount namespace by its
//! pid namespace's init:
//! - the host read-only, every mount of it (`mount_setattr` with `AT_RECURSIVE`, Linux
//!   5.12), so that nothing the worker runs can change a file outside what follows;
//! - a private, empty `/tmp`, `/run` and `/var/tmp` (tmpfs), and the parent of the workers'
//!   scratch directories: no host file or socket there is visible, nor another worker's
//!   scratch directory;
//! - a minimal `/dev` (tmpfs with `null`, `zero`, `full`, `random`, `urandom` and `tty`
//!   bound from the host's, `fd`, `stdin`, `stdout`, `stderr` links, and a private `shm`);
//! - the working directory and the worker's scratch directory writable, the processor's
//!   own directory (read-only) where a private directory would hide it, and each
//!   `--bind SRC[:DST][:ro]`;
//! - every Unix socket the host has bound elsewhere on the file system (from
//!   `/proc/net/unix`) covered by `/dev/null`, so that connecting to it fails.
//!
//! Abstract Unix sockets are not files: `--isolate net` is what puts them out of reach.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A `--bind`: `src` (on the host) seen at `dst`, writable unless `read_only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path.
    pub src: PathBuf,
    /// Where the worker sees it.
    pub dst: PathBuf,
    /// Read-only (`:ro`).
    pub read_only: bool,
}

/// The most `--bind`s: the child keeps one fd per bind (and per device) on its stack.
pub const MAX_BINDS: usize = 32;

/// The host's device nodes a worker gets in its `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The directories made private (empty tmpfs), in mount order.
const PRIVATE: [&str; 5] = ["/tmp", "/run", "/var/tmp", "/dev", "/dev/shm"];

impl std::str::FromStr for Bind {
    type Err = String;

    /// `SRC`, `SRC:DST`, `SRC:ro` or `SRC:DST:ro`; both absolute (SRC may be relative to
    /// the current directory), without `..`.
    fn from_str(s: &str) -> Result<Bind, String> {
        let mut parts: Vec<&str> = s.split(':').collect();
        let read_only = parts.last() == Some(&"ro") && parts.len() > 1;
        if read_only {
            parts.pop();
        }
        let (src, dst) = match parts.as_slice() {
            [src] => (*src, *src),
            [src, dst] => (*src, *dst),
            _ => return Err(format!("--bind {s:?}: expected SRC[:DST][:ro]")),
        };
        if src.is_empty() || dst.is_empty() {
            return Err(format!("--bind {s:?}: an empty path"));
        }
        let src = std::fs::canonicalize(src).map_err(|e| format!("--bind {s:?}: {src}: {e}"))?;
        let dst = PathBuf::from(dst);
        if !dst.is_absolute() || dst.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "--bind {s:?}: the destination must be an absolute path without `..`"
            ));
        }
        Ok(Bind {
            src,
            dst,
            read_only,
        })
    }
}

/// What stays the same from spawn to spawn, checked at start.
#[derive(Debug, Clone)]
pub struct Layout {
    binds: Vec<Bind>,
    /// The private directories that exist here (and are not symbolic links).
    private: Vec<PathBuf>,
}

impl Layout {
    /// Checks `binds`: at most [`MAX_BINDS`], each destination either on the host already
    /// or under a private directory (where it is made).
    pub fn new(binds: &[Bind]) -> Result<Layout, String> {
        if binds.len() > MAX_BINDS {
            return Err(format!("at most {MAX_BINDS} --bind are supported"));
        }
        let private: Vec<PathBuf> = PRIVATE
            .iter()
            .map(PathBuf::from)
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .collect();
        for b in binds {
            let under_private = private.iter().any(|p| b.dst.starts_with(p));
            if !under_private && std::fs::symlink_metadata(&b.dst).is_err() {
                return Err(format!(
                    "--bind {}:{}: the destination must exist, or be under {}",
                    b.src.display(),
                    b.dst.display(),
                    PRIVATE.join(", ")
                ));
            }
        }
        Ok(Layout {
            binds: binds.to_vec(),
            private,
        })
    }

    /// The plan for one worker running `program`, whose working directory is `cwd` and
    /// whose scratch directory is `scratch`.
    pub(crate) fn plan(&self, program: &Path, cwd: &Path, scratch: &Path) -> io::Result<Plan> {
        let mut private = self.private.clone();
        // Other workers' scratch directories are its siblings.
        if let Some(parent) = scratch.parent() {
            if !private.iter().any(|p| parent.starts_with(p)) && parent != Path::new("/") {
                private.push(parent.to_path_buf());
            }
        }
        let mut keeps = Vec::new();
        for dev in DEVICES {
            let path = Path::new("/dev").join(dev);
            if path.exists() {
                keeps.push((path.clone(), path, true, false));
            }
        }
        // The working directory (by default the one jobsup was started in) stays writable,
        // but not the root: binding `/` back would undo the read-only host (a worker
        // started from `/` can still enter it, read-only).
        if cwd != Path::new("/") {
            keeps.push((cwd.to_path_buf(), cwd.to_path_buf(), true, true));
        }
        // A processor that lives in a private directory (a build in /tmp) must still be
        // there to run, with what lies beside it: its directory, read-only.
        if let Some(dir) = program.parent() {
            if private.iter().any(|p| dir.starts_with(p)) {
                keeps.push((dir.to_path_buf(), dir.to_path_buf(), false, true));
            }
        }
        keeps.push((scratch.to_path_buf(), scratch.to_path_buf(), true, true));
        for b in &self.binds {
            keeps.push((b.src.clone(), b.dst.clone(), !b.read_only, b.src.is_dir()));
        }
        // Outer before inner: a bind inside another lands on the outer one's view. The
        // working directory may be the scratch directory (`--cwd scratch`): once is enough.
        keeps.sort_by_key(|(_, dst, _, _)| dst.components().count());
        keeps.dedup_by(|a, b| a.1 == b.1);
        // Every host socket, where the worker sees it: at its own path unless a private
        // directory hides it, and under each kept path it is in.
        let mut sockets = Vec::new();
        for socket in host_sockets() {
            if !private.iter().any(|p| socket.starts_with(p)) {
                sockets.push(socket.clone());
            }
            for (src, dst, _, _) in &keeps {
                if let Ok(rest) = socket.strip_prefix(src) {
                    sockets.push(dst.join(rest));
                }
            }
        }
        let keeps = keeps
            .into_iter()
            .map(|(src, dst, writable, dir)| {
                // The components of `dst` under a private directory: made in the tmpfs.
                let dirs = dst
                    .ancestors()
                    // A file's own path is not a directory to make.
                    .skip(if dir { 0 } else { 1 })
                    .filter(|a| {
                        private
                            .iter()
                            .any(|p| a.starts_with(p) && *a != p.as_path())
                    })
                    .map(c_path)
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(Keep {
                    src: c_path(&src)?,
                    dst: c_path(&dst)?,
                    // Made outermost first.
                    dirs: dirs.into_iter().rev().collect(),
                    dir,
                    writable,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            private: private
                .iter()
                .map(|p| {
                    let mode = if p == Path::new("/dev") {
                        "755"
                    } else {
                        "1777"
                    };
                    Ok((
                        c_path(p)?,
                        CString::new(format!("mode={mode}")).expect("no NUL"),
                    ))
                })
                .collect::<io::Result<_>>()?,
            keeps,
            sockets: sockets
                .iter()
                .map(|s| c_path(s))
                .collect::<io::Result<_>>()?,
        })
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// The paths of the Unix sockets bound in this network namespace, from `/proc/net/unix`.
fn host_sockets() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// A path the worker keeps (its directories, the devices, the binds), re-exposed over
/// the private directories.
#[derive(Debug)]
pub(crate) struct Keep {
    src: CString,
    dst: CString,
    dirs: Vec<CString>,
    dir: bool,
    writable: bool,
}

/// One worker's mounts, made before the clone.
#[derive(Debug)]
pub(crate) struct Plan {
    private: Vec<(CString, CString)>,
    keeps: Vec<Keep>,
    sockets: Vec<CString>,
}

/// `struct mount_attr` (Linux 5.12).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets or clears read-only on the mount at `path` (and, with `recursive`, all below).
///
/// # Safety
/// A system call on a NUL-terminated path and a live struct.
pub(crate) unsafe fn read_only(path: &std::ffi::CStr, on: bool, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: if on { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if on { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: the caller's.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// `/proc/self/fd/<fd>`, written into `buf` without allocating.
fn fd_path(fd: libc::c_int, buf: &mut [u8; 32]) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

/// Makes the worker's file system, in its init, in the mount namespace just made (with
/// its own `/proc`, which the binds from fds go through).
///
/// # Safety
/// Only between clone and exec: async-signal-safe calls on data prepared before.
pub(crate) unsafe fn enter(plan: &Plan) -> io::Result<()> {
    const MAX: usize = MAX_BINDS + 8;
    let mut fds = [-1 as libc::c_int; MAX];
    // SAFETY: system calls on NUL-terminated strings prepared before the clone, and on
    // fds this process opens.
    unsafe {
        // What the private directories will hide is opened first.
        for (i, keep) in plan.keeps.iter().enumerate().take(MAX) {
            let fd = libc::open(keep.src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            fds[i] = fd;
        }
        read_only(c"/", true, true)?;
        for (dir, options) in &plan.private {
            check(libc::mount(
                c"tmpfs".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            ) as libc::c_long)?;
            if dir.as_bytes() == b"/dev" {
                for (link, to) in [
                    (c"/dev/fd", c"/proc/self/fd"),
                    (c"/dev/stdin", c"/proc/self/fd/0"),
                    (c"/dev/stdout", c"/proc/self/fd/1"),
                    (c"/dev/stderr", c"/proc/self/fd/2"),
                ] {
                    libc::symlink(to.as_ptr(), link.as_ptr());
                }
                libc::mkdir(c"/dev/shm".as_ptr(), 0o1777);
            }
        }
        let mut buf = [0u8; 32];
        for (i, keep) in plan.keeps.iter().enumerate().take(MAX) {
            for dir in &keep.dirs {
                libc::mkdir(dir.as_ptr(), 0o755);
            }
            if !keep.dir {
                let fd = libc::open(
                    keep.dst.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            check(libc::mount(
                fd_path(fds[i], &mut buf),
                keep.dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) as libc::c_long)?;
            libc::close(fds[i]);
            if keep.writable {
                read_only(&keep.dst, false, false)?;
            }
        }
        for socket in &plan.sockets {
            // Gone, or hidden already: nothing to cover.
            libc::mount(
                c"/dev/null".as_ptr(),
                socket.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_with_and_without_destination_and_ro() {
        let b: Bind = "/tmp".parse().expect("a bind");
        assert_eq!((b.dst.as_path(), b.read_only), (Path::new("/tmp"), false));
        let b: Bind = "/tmp:/data:ro".parse().expect("a bind");
        assert_eq!((b.dst.as_path(), b.read_only), (Path::new("/data"), true));
        let b: Bind = "/tmp:ro".parse().expect("a bind");
        assert!(b.read_only);
        assert!("/tmp:data".parse::<Bind>().is_err());
        assert!("/tmp:/a/../b".parse::<Bind>().is_err());
        assert!("/no/such/dir".parse::<Bind>().is_err());
        assert!("".parse::<Bind>().is_err());
        assert!("/tmp:/a:/b".parse::<Bind>().is_err());
    }

    #[test]
    fn fd_paths_are_spelled_out() {
        let mut buf = [0u8; 32];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(fd, &mut buf);
            // SAFETY: fd_path NUL-terminates what it wrote.
            let got = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(got.to_str(), Ok(want));
        }
    }
}
