//! Opening and reading files that someone other than root may control: the target's jitdumps and perf
//! map in /tmp, its executable and libraries (through /proc/PID/root), a `--symbols-from` build, a marker
//! log. Every such file is opened in one way:
//!
//! 1. `O_PATH` (with `O_NOFOLLOW` when the target may have put the last component there): nothing is
//!    opened yet, so a FIFO cannot block and a device's driver is never called.
//! 2. `fstat` on that handle: anything but a regular file is refused, with what it is.
//! 3. The same inode is opened for reading through `/proc/self/fd/N` (no second lookup of the path, so
//!    nothing can be swapped in between), `O_RDONLY | O_NONBLOCK | O_CLOEXEC`.
//! 4. A file the target controls on a FUSE file system is refused.
//!
//! Why a read is then bounded: a read of a regular file returns once its file system has the bytes, from
//! the page cache or the disk, and never waits for a writer (that is what FIFOs, sockets and terminals do,
//! and they were refused). The exception is a file system served by a process, FUSE, whose owner can
//! leave a request unanswered: a user can mount one (fusermount, or in a user namespace the target runs
//! in), so the target's files are refused there (step 4), and neither read nor mapped. Step 4 comes after
//! the path was looked up, though: a FUSE daemon that leaves the lookup itself unanswered still holds
//! step 1 (only a helper thread with a deadline would bound that). What is read is capped by the caller
//! ([`Cap`]), so a file that keeps growing (a link to /dev/zero was one, before step 2) cannot take the
//! memory.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Read},
    ops::Deref,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

/// Who chose the path's last component, which decides whether a symbolic link there is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The person running the tool named it (`--symbols-from`, `--markers-from`): a link is followed, as
    /// any tool would.
    Operator,
    /// The target or another user may have put it there (`/tmp/perf-PID.map`, a jitdump, a library seen
    /// through /proc/PID/root): a link is refused, and so is a FUSE file.
    Target,
    /// A file of /proc, made by the kernel (`environ`), or a link there that the kernel resolves to the
    /// file itself, not by name (`/proc/PID/map_files/START-END`, for a mapped file that was deleted):
    /// followed; what it leads to is still the target's file.
    Proc,
}

impl Origin {
    /// [`Origin::Proc`] for `/proc/PID/map_files/...`, else [`Origin::Target`].
    pub fn of_target_path(path: &Path) -> Self {
        let parts: Vec<&std::ffi::OsStr> = path.iter().collect();
        let is_map_file = matches!(parts.as_slice(), [root, proc, pid, map_files, _]
            if *root == "/" && *proc == "proc" && *map_files == "map_files"
                && pid.to_str().is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit())));
        if is_map_file { Origin::Proc } else { Origin::Target }
    }
}

/// The most read of one file, per use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// An ELF file read whole (allocator discovery, `--symbols-from`, unwinding tables): the largest
    /// unstripped builds seen are about 1 GiB (Bun's `bun-profile`). It is read once, when needed, and
    /// freed once its symbols are taken; a root-owned file nobody else may write is mapped instead.
    pub const ELF: Cap = Cap(4 << 30);
    /// A jitdump or perf map, read as it grows: past this, the rest is not read.
    pub const JIT: Cap = Cap(256 << 20);
    /// A small text file of /proc (environ).
    pub const PROC_TEXT: Cap = Cap(16 << 20);
}

/// Why a file was not read: one line, naming the file.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub why: Why,
}

#[derive(Debug)]
pub enum Why {
    Io(io::Error),
    /// Not a regular file: what it is instead.
    NotRegular(&'static str),
    OnFuse,
    TooLarge {
        size: u64,
        cap: u64,
    },
}

impl FileError {
    fn new(path: &Path, why: Why) -> Self {
        Self { path: path.to_path_buf(), why }
    }

    /// The file is not there (as opposed to there but refused).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.why, Why::Io(error) if error.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.why {
            Why::Io(error) => write!(f, "cannot read {path}: {error}"),
            Why::NotRegular(kind) => write!(f, "{path} is not a regular file (it is {kind})"),
            Why::OnFuse => {
                write!(f, "{path} is on a FUSE file system, whose owner could leave a read unanswered: not read")
            }
            Why::TooLarge { size, cap } => {
                write!(f, "{path} is too large to read ({size} bytes; the most read is {cap})")
            }
        }
    }
}

impl std::error::Error for FileError {}

impl From<FileError> for io::Error {
    fn from(error: FileError) -> Self {
        let kind = match &error.why {
            Why::Io(inner) => inner.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error.to_string())
    }
}

/// What a file type is called in a message.
fn kind_name(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// A regular file opened for reading, as the module's documentation says.
pub fn open(path: &Path, origin: Origin) -> Result<File, FileError> {
    let handle = open_path(path, origin)?;
    let metadata = handle.metadata().map_err(|error| FileError::new(path, Why::Io(error)))?;
    if !metadata.file_type().is_file() {
        return Err(FileError::new(path, Why::NotRegular(kind_name(metadata.file_type()))));
    }
    let file = reopen(&handle, libc::O_RDONLY).map_err(|error| FileError::new(path, Why::Io(error)))?;
    if origin != Origin::Operator && is_on_fuse(&file) {
        return Err(FileError::new(path, Why::OnFuse));
    }
    Ok(file)
}

/// Everything in `path`, at most `cap` bytes; a file larger than that is an error, not cut.
pub fn read(path: &Path, origin: Origin, cap: Cap) -> Result<FileBytes, FileError> {
    let file = open(path, origin)?;
    let metadata = file.metadata().map_err(|error| FileError::new(path, Why::Io(error)))?;
    let size = metadata.len();
    if size > cap.0 {
        return Err(FileError::new(path, Why::TooLarge { size, cap: cap.0 }));
    }
    if size > 0 && is_root_only_writable(&metadata) && !is_on_fuse(&file) {
        // Only root may change it, so it cannot shrink under the mapping (which would be a SIGBUS).
        // SAFETY: the mapping is read-only and the file cannot be truncated or written by anyone else.
        if let Ok(mapped) = unsafe { memmap2::Mmap::map(&file) } {
            return Ok(FileBytes::Mapped(mapped));
        }
    }
    // /proc files show size 0: read to the end, up to the cap.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(cap.0 + 1).read_to_end(&mut bytes).map_err(|error| FileError::new(path, Why::Io(error)))?;
    if bytes.len() as u64 > cap.0 {
        return Err(FileError::new(path, Why::TooLarge { size: bytes.len() as u64, cap: cap.0 }));
    }
    Ok(FileBytes::Read(bytes))
}

/// A file's bytes, read or mapped.
#[derive(Debug)]
pub enum FileBytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Read(bytes) => bytes,
            FileBytes::Mapped(mapped) => mapped,
        }
    }
}

/// Step 1: a handle on the inode, opening nothing.
fn open_path(path: &Path, origin: Origin) -> Result<File, FileError> {
    let mut flags = libc::O_PATH;
    if origin == Origin::Target {
        flags |= libc::O_NOFOLLOW;
    }
    // With O_PATH | O_NOFOLLOW, a symbolic link opens as itself; fstat then says what it is.
    OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|error| FileError::new(path, Why::Io(error)))
}

/// Opens the inode behind `handle` again, through /proc/self/fd: the same file, whatever its path now
/// leads to. `O_NONBLOCK` as well, so that nothing can make the open or a read wait.
pub fn reopen(handle: &File, access: i32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    match access {
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    options.open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Opens a path the operator gave (links followed) as a handle on its inode, opening nothing: for a
/// caller that decides by the file's type what to do (a marker log may be a FIFO).
pub fn open_handle(path: &Path) -> Result<(File, std::fs::Metadata), FileError> {
    let handle = open_path(path, Origin::Operator)?;
    let metadata = handle.metadata().map_err(|error| FileError::new(path, Why::Io(error)))?;
    Ok((handle, metadata))
}

/// What a file type is called in a message (for callers of [`open_handle`]).
pub fn describe(metadata: &std::fs::Metadata) -> &'static str {
    kind_name(metadata.file_type())
}

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn is_on_fuse(file: &File) -> bool {
    // SAFETY: fstatfs writes a statfs struct through a valid pointer; the descriptor is open.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) };
    result == 0 && stats.f_type as i64 == FUSE_SUPER_MAGIC
}

/// Owned by root and writable by no one else.
fn is_root_only_writable(metadata: &std::fs::Metadata) -> bool {
    metadata.uid() == 0 && metadata.permissions().mode() & 0o022 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leaktrace-untrusted-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = scratch("regular");
        let path = dir.join("a");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(&*read(&path, Origin::Target, Cap(16)).unwrap(), b"hello");
        let error = read(&path, Origin::Target, Cap(4)).unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_link_only_from_the_target() {
        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        let error = open(&fifo, Origin::Operator).unwrap_err();
        assert_eq!(error.to_string(), format!("{} is not a regular file (it is a FIFO)", fifo.display()));
        let zero = dir.join("zero");
        symlink("/dev/zero", &zero).unwrap();
        assert!(open(&zero, Origin::Target).unwrap_err().to_string().ends_with("(it is a symbolic link)"));
        assert!(open(&zero, Origin::Operator).unwrap_err().to_string().ends_with("(it is a character device)"));
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.join("link");
        symlink(&file, &link).unwrap();
        assert!(open(&link, Origin::Operator).is_ok());
        assert!(open(&link, Origin::Target).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn proc_files_are_read_up_to_the_cap() {
        let environ = read(Path::new("/proc/self/environ"), Origin::Proc, Cap::PROC_TEXT).unwrap();
        assert!(!environ.is_empty());
        assert!(read(Path::new("/proc/self/environ"), Origin::Proc, Cap(1)).is_err());
    }

    #[test]
    fn map_files_links_are_followed() {
        assert_eq!(Origin::of_target_path(Path::new("/proc/42/map_files/1000-2000")), Origin::Proc);
        assert_eq!(Origin::of_target_path(Path::new("/proc/42/root/tmp/perf-42.map")), Origin::Target);
        assert_eq!(Origin::of_target_path(Path::new("/tmp/proc/42/map_files/x")), Origin::Target);
    }
}
