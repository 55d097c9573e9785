//! The output folder, reached only through directory descriptors. The tool runs as root beside folders
//! other users can write in, so a path is never trusted twice: the folder is created by us, or opened
//! without following a link and checked to belong to root or to the user who ran sudo and to be writable
//! by no one else; every file and folder below it is then created, renamed and removed relative to a
//! descriptor (`openat`, `mkdirat`, `renameat`, `unlinkat`, never following a link, a new file always
//! `O_EXCL`), and handed to the invoking user with `fchown` on its own descriptor. A link planted in the
//! folder, before the run or during it, redirects nothing. Files are written aside and renamed into place,
//! so a reader never sees half a file.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, BufWriter, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Result, anyhow};
use rustix::{
    fs::{self as at, AtFlags, FileType, Gid, Mode, OFlags, Uid},
    io::Errno,
};

/// A folder opened for good: later renames or links in its place do not change which folder this is.
const FOLDER: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// How deep [`OutputDir::remove_tree`] goes: the tool's own folders are at most four levels deep
/// (`segments/N-pidP/checkpoints/STAMP/`); anything deeper is not ours and is left alone.
const MAX_TREE_DEPTH: usize = 6;

pub struct OutputDir {
    dir: OwnedFd,
    /// For messages and the paths printed; never used to reach a file.
    path: PathBuf,
    owner: Option<(Uid, Gid)>,
    run: Arc<RunState>,
    /// The output folder and the parents we created for it, outermost first, each as (its parent, its
    /// name): removed again if the run writes nothing (see `Drop`). Empty below the output folder.
    created: Vec<(OwnedFd, OsString)>,
}

/// What the output folder and every folder opened below it share.
struct RunState {
    /// The output folder, for the clearing below.
    root: OwnedFd,
    root_path: PathBuf,
    /// Removes what an earlier run left in a reused folder; taken and run just before this run first
    /// writes anything, so that a run which fails before (a command that cannot start) leaves the earlier
    /// reports as they were.
    clear_earlier_run: Mutex<Option<fn(&OutputDir)>>,
}

impl OutputDir {
    /// Creates the output folder (and its missing parents), or opens the existing one if it is safe to
    /// write in as root, and checks that a file can be written in it. `clear_earlier_run` removes, from an
    /// existing folder, the files an earlier run wrote; it is called before the first write.
    pub fn create(path: &Path, clear_earlier_run: fn(&OutputDir)) -> Result<Self> {
        let cannot = |error: io::Error| {
            anyhow!("cannot write the output folder {}: {error}: choose another with -o", path.display())
        };
        let invoking = invoking_user();
        let (dir, created, existed) = open_or_create(path, invoking).map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "the output folder {} is a symbolic link, which is not followed: give the folder itself, or choose \
                 another with -o",
                path.display()
            ),
            _ => cannot(error),
        })?;
        if existed {
            let stat = at::fstat(&dir).map_err(|errno| cannot(errno.into()))?;
            if let Some(problem) = unsafe_folder(stat.st_uid, stat.st_gid, stat.st_mode, &trusted_owners(invoking)) {
                anyhow::bail!(
                    "the output folder {} {problem}; as root, reports go only into a folder of root's or of the \
                     user who ran sudo that no one else can write in: choose another with -o",
                    path.display()
                );
            }
        }
        // What is written goes to the user who ran sudo when the folder is theirs (they gave it, or it was
        // made where they could have made it); in a folder of root's, it stays root's.
        let folder_owner = at::fstat(&dir).map_err(|errno| cannot(errno.into()))?.st_uid;
        let owner = invoking.filter(|(uid, _)| uid.as_raw() == folder_owner);
        let run = Arc::new(RunState {
            root: dir.try_clone().map_err(cannot)?,
            root_path: path.to_path_buf(),
            clear_earlier_run: Mutex::new(existed.then_some(clear_earlier_run)),
        });
        // Built before the last check, so that a folder created for nothing is removed on the way out.
        let out = Self { dir, path: path.to_path_buf(), owner, run, created };
        check_writable(&out.dir).map_err(cannot)?;
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A folder inside this one (several levels: `segments/1-pid42`), created and handed over as needed,
    /// each level opened without following a link. `""`: this folder again.
    pub fn subfolder(&self, relative: &Path) -> Result<Self> {
        let mut folder = self.same()?;
        if relative.as_os_str().is_empty() {
            return Ok(folder);
        }
        // Before opening anything below: the clearing may remove a folder of an earlier run.
        self.before_writing();
        for component in relative.components() {
            let Component::Normal(name) = component else {
                anyhow::bail!("{} is not a folder name inside {}", relative.display(), self.path.display());
            };
            folder = folder.child_created(name)?;
        }
        Ok(folder)
    }

    /// The folder `name` inside this one if it is there (a folder, not a link), without creating it.
    pub fn existing(&self, name: &str) -> Result<Option<Self>> {
        self.child(OsStr::new(name), false)
    }

    /// A folder that appears whole or not at all: its files go into a hidden `.NAME.partial` folder
    /// beside it, which [`Partial::publish`] renames into place. Dropped unpublished, it is removed.
    pub fn partial(&self, name: &str) -> Result<Partial> {
        self.before_writing();
        let aside = format!(".{name}.partial");
        // A tracer killed while writing leaves its partial folder: replaced now.
        self.remove_tree(&aside)
            .map_err(|error| anyhow!("cannot remove the stale {aside} in {}: {error}", self.path.display()))?;
        let dir = self.child_created(OsStr::new(&aside))?;
        Ok(Partial { dir, parent: self.same()?, aside, name: name.to_string() })
    }

    /// Points the symbolic link `link` (inside this folder) at `target` (relative to this folder),
    /// replacing it atomically.
    pub fn point(&self, link: &str, target: &Path) -> Result<()> {
        self.before_writing();
        let aside = format!(".{link}.new");
        let cannot = |error: io::Error| anyhow!("cannot update {}: {error}", self.path.join(link).display());
        remove_entry(&self.dir, &aside).map_err(cannot)?;
        at::symlinkat(target, &self.dir, &aside).map_err(|errno| cannot(errno.into()))?;
        if let Some((uid, gid)) = self.owner {
            // The link itself, by a descriptor to it: a name can be swapped between two calls.
            let link_fd =
                at::openat(&self.dir, &aside, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|errno| cannot(errno.into()))?;
            let is_link = at::fstat(&link_fd).is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode).is_symlink());
            if is_link {
                let _ =
                    at::chownat(&link_fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW);
            }
        }
        at::renameat(&self.dir, &aside, &self.dir, link).map_err(|errno| cannot(errno.into()))
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        self.write_with(name, |out| Ok(out.write_all(bytes)?))
    }

    /// Writes a file through a buffered writer: into a new `.NAME.partial` beside it (created `O_EXCL`, so
    /// never through a link), then renamed into place. On any failure the partial file is removed and the
    /// error names the file.
    pub fn write_with(&self, name: &str, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<PathBuf> {
        self.before_writing();
        let path = self.path.join(name);
        let aside = format!(".{name}.partial");
        let written = (|| -> Result<()> {
            remove_entry(&self.dir, &aside)?;
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let file = at::openat(&self.dir, &aside, flags, Mode::from_raw_mode(0o644))?;
            self.hand_over(&file);
            let mut out = BufWriter::new(File::from(file));
            fill(&mut out)?;
            out.flush()?;
            at::renameat(&self.dir, &aside, &self.dir, name)?;
            Ok(())
        })();
        written.map(|()| path.clone()).map_err(|error| {
            let _ = at::unlinkat(&self.dir, &aside, AtFlags::empty());
            error.context(format!("cannot write {}", path.display()))
        })
    }

    /// Sets aside `bytes` of disk for the next [`Self::write_with`] of `name`: its partial file holds them
    /// until that write replaces it. So a file written again at the end (report.json, with what failed)
    /// still fits after the other files filled the disk. Best effort: a disk already full reserves less.
    pub fn reserve(&self, name: &str, bytes: u64) {
        let aside = format!(".{name}.partial");
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(file) = remove_entry(&self.dir, &aside)
            .and_then(|()| Ok(at::openat(&self.dir, &aside, flags, Mode::from_raw_mode(0o600))?))
        else {
            return;
        };
        if at::fallocate(&file, at::FallocateFlags::empty(), 0, bytes).is_ok() {
            return;
        }
        // A file system without fallocate: zeros, as many as fit.
        let mut file = File::from(file);
        let zeros = [0u8; 64 << 10];
        let mut left = bytes;
        while left > 0 && file.write_all(&zeros[..left.min(zeros.len() as u64) as usize]).is_ok() {
            left = left.saturating_sub(zeros.len() as u64);
        }
    }

    /// The content of the regular file `name` written earlier (not following a link).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let read = (|| -> io::Result<Vec<u8>> {
            let mut bytes = Vec::new();
            File::from(at::openat(&self.dir, name, flags, Mode::empty())?).read_to_end(&mut bytes)?;
            Ok(bytes)
        })();
        read.map_err(|error| anyhow!("cannot read {}: {error}", self.path.join(name).display()))
    }

    /// The size of the file `name` (not following a link).
    pub fn file_size(&self, name: &str) -> Option<u64> {
        at::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW).ok().map(|stat| stat.st_size as u64)
    }

    /// The names in this folder, with what each is.
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileType)>> {
        entries(&self.dir)
    }

    /// Removes the file or link `name` (a missing one is fine; a folder is left alone: an error).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        remove_entry(&self.dir, name)
    }

    /// Removes the folder `name` if it is empty.
    pub fn remove_empty_folder(&self, name: &str) -> io::Result<()> {
        match at::unlinkat(&self.dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Removes `name` and, if it is a folder, everything in it: walked by descriptor, never following a
    /// link (a link is removed, not what it points at), at most [`MAX_TREE_DEPTH`] levels deep. For the
    /// tool's own folders only (a stale partial folder, a checkpoint pruned).
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        remove_tree(&self.dir, OsStr::new(name), MAX_TREE_DEPTH)
    }

    /// This folder again, through a descriptor of its own.
    fn same(&self) -> Result<Self> {
        let dir = self.dir.try_clone().map_err(|error| anyhow!("cannot open {}: {error}", self.path.display()))?;
        Ok(Self { dir, path: self.path.clone(), owner: self.owner, run: self.run.clone(), created: Vec::new() })
    }

    /// The folder `name` inside this one, created (and handed over) when missing.
    fn child_created(&self, name: &OsStr) -> Result<Self> {
        self.child(name, true)?.ok_or_else(|| anyhow!("cannot create {}", self.path.join(name).display()))
    }

    /// The folder `name` inside this one, opened without following a link; created (and handed over)
    /// when missing and `create`, else `None`.
    fn child(&self, name: &OsStr, create: bool) -> Result<Option<Self>> {
        let path = self.path.join(name);
        let cannot = |errno: Errno| match errno {
            Errno::LOOP => anyhow!("{} is a symbolic link, not a folder: not followed", path.display()),
            Errno::NOTDIR => anyhow!("{} is not a folder", path.display()),
            _ => anyhow!("cannot open {}: {}", path.display(), io::Error::from(errno)),
        };
        let dir = match open_folder(&self.dir, name) {
            Ok(dir) => dir,
            Err(Errno::NOENT) if create => {
                self.before_writing();
                match at::mkdirat(&self.dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(anyhow!("cannot create {}: {}", path.display(), io::Error::from(errno))),
                }
                let dir = open_folder(&self.dir, name).map_err(cannot)?;
                self.hand_over(&dir);
                dir
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(errno) => return Err(cannot(errno)),
        };
        Ok(Some(Self { dir, path, owner: self.owner, run: self.run.clone(), created: Vec::new() }))
    }

    /// Gives what we just created (by its descriptor) to the user who ran sudo. Only what this process
    /// created: a folder or file found in place is left as it is.
    fn hand_over(&self, created: &OwnedFd) {
        let Some((uid, gid)) = self.owner else { return };
        // SAFETY: geteuid has no preconditions.
        let ours = at::fstat(created).is_ok_and(|stat| stat.st_uid == unsafe { libc::geteuid() });
        if ours {
            let _ = at::fchown(created, Some(uid), Some(gid));
        }
    }

    /// Runs the clearing of an earlier run's files, once, before this run first opens a folder or
    /// writes a file below the output folder.
    fn before_writing(&self) {
        let clear = self.run.clear_earlier_run.lock().map(|mut clear| clear.take()).unwrap_or(None);
        let Some(clear) = clear else { return };
        if let Ok(dir) = self.run.root.try_clone() {
            let root = Self {
                dir,
                path: self.run.root_path.clone(),
                owner: self.owner,
                run: self.run.clone(),
                created: Vec::new(),
            };
            clear(&root);
        }
    }
}

impl Drop for OutputDir {
    /// A folder we created for a run that wrote nothing into it (the command could not start, the probes
    /// did not load) is removed again, with the parents we created for it; only folders that hold nothing
    /// but empty folders.
    fn drop(&mut self) {
        for (parent, name) in self.created.iter().rev() {
            if remove_empty_tree(parent, name, MAX_TREE_DEPTH).is_err() {
                break;
            }
        }
    }
}

/// A folder being written aside (see [`OutputDir::partial`]).
pub struct Partial {
    dir: OutputDir,
    parent: OutputDir,
    aside: String,
    name: String,
}

impl Partial {
    pub fn dir(&self) -> &OutputDir {
        &self.dir
    }

    /// Renames the folder into place (replacing one of that name); returns its path.
    pub fn publish(mut self) -> Result<PathBuf> {
        let target = self.parent.path.join(&self.name);
        let cannot = |error: io::Error| anyhow!("cannot publish {}: {error}", target.display());
        self.parent.remove_tree(&self.name).map_err(cannot)?;
        at::renameat(&self.parent.dir, &self.aside, &self.parent.dir, &self.name)
            .map_err(|errno| cannot(errno.into()))?;
        self.aside.clear();
        Ok(target)
    }
}

impl Drop for Partial {
    /// Unpublished (a write failed): nothing of it stays.
    fn drop(&mut self) {
        if !self.aside.is_empty() {
            let _ = self.parent.remove_tree(&self.aside);
        }
    }
}

/// Why an existing output folder is not safe to write in as root, if it is not: it must belong to one of
/// `trusted` (owner, the owner's group), and no one but its owner and that group may write in it.
pub fn unsafe_folder(uid: u32, gid: u32, mode: u32, trusted: &[(u32, u32)]) -> Option<String> {
    let permissions = mode & 0o7777;
    let Some(&(_, owners_group)) = trusted.iter().find(|(trusted_uid, _)| *trusted_uid == uid) else {
        return Some(format!("belongs to uid {uid}, who could redirect what is written there"));
    };
    if mode & 0o002 != 0 {
        return Some(format!("can be written in by anyone (mode {permissions:04o})"));
    }
    if mode & 0o020 != 0 && gid != owners_group {
        return Some(format!("can be written in by group {gid}, not its owner's (mode {permissions:04o})"));
    }
    None
}

/// Whether the user `(uid, gid)` could make a folder in one of this owner, group and mode: a folder we
/// make for them is handed over only then. Elsewhere it would give them more than they have: a folder of
/// theirs in `/etc/systemd/system/x.service.d`, say, whose files root's programs read.
pub fn may_make_in(owner: u32, group: u32, mode: u32, (uid, gid): (Uid, Gid)) -> bool {
    if owner == uid.as_raw() {
        mode & 0o300 == 0o300
    } else if group == gid.as_raw() {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

/// Root, the user we run as, and the user who ran sudo, each with their group.
fn trusted_owners(invoking: Option<(Uid, Gid)>) -> Vec<(u32, u32)> {
    // SAFETY: geteuid and getegid have no preconditions.
    let mut owners = vec![(0, 0), unsafe { (libc::geteuid(), libc::getegid()) }];
    owners.extend(invoking.map(|(uid, gid)| (uid.as_raw(), gid.as_raw())));
    owners
}

/// Opens `path` as a folder, creating what is missing. Existing parents are opened as the system resolves
/// them; the folder itself, and every folder we create, without following a link. Returns the folder and
/// the folders created, outermost first, and whether the folder itself was there already.
type Opened = (OwnedFd, Vec<(OwnedFd, OsString)>, bool);

fn open_or_create(path: &Path, owner: Option<(Uid, Gid)>) -> io::Result<Opened> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path"));
    }
    let start = if path.is_absolute() { "/" } else { "." };
    let mut current = at::openat(at::CWD, start, FOLDER, Mode::empty())?;
    let mut created = Vec::new();
    let mut existed = true;
    let names: Vec<&OsStr> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name),
            Component::ParentDir => Some(OsStr::new("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for (index, name) in names.iter().enumerate() {
        let last = index + 1 == names.len();
        let flags = if last || !existed { FOLDER } else { FOLDER.difference(OFlags::NOFOLLOW) };
        let opened = if flags.contains(OFlags::NOFOLLOW) {
            open_folder(&current, name)
        } else {
            at::openat(&current, *name, flags, Mode::empty())
        };
        let next = match opened {
            Ok(next) => next,
            Err(Errno::NOENT) if *name != ".." => {
                let made = match at::mkdirat(&current, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false, // made by someone else meanwhile: checked like any existing one
                    Err(errno) => return Err(errno.into()),
                };
                let next = open_folder(&current, name)?;
                existed = !made;
                if made {
                    // Theirs only where they could have made it themselves.
                    let parent = at::fstat(&current)?;
                    if let Some((uid, gid)) =
                        owner.filter(|user| may_make_in(parent.st_uid, parent.st_gid, parent.st_mode, *user))
                    {
                        let _ = at::fchown(&next, Some(uid), Some(gid));
                    }
                    created.push((std::mem::replace(&mut current, next), name.to_os_string()));
                    continue;
                }
                // Someone else's folder where ours was to be: if it is the output folder, it must pass the
                // checks of an existing one.
                next
            }
            Err(errno) => return Err(errno.into()),
        };
        current = next;
    }
    Ok((current, created, existed))
}

/// Opens the folder `name` in `dir` without following a link. A link is `ELOOP` (asked for a folder,
/// the kernel says `ENOTDIR` for one).
fn open_folder(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    at::openat(dir, name, FOLDER, Mode::empty()).map_err(|errno| {
        let is_link = || {
            at::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode).is_symlink())
        };
        if errno == Errno::NOTDIR && is_link() { Errno::LOOP } else { errno }
    })
}

/// Creates and removes a file in `dir`, the way reports are written.
fn check_writable(dir: &OwnedFd) -> io::Result<()> {
    const NAME: &str = ".leaktrace-write-check";
    remove_entry(dir, NAME)?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    drop(at::openat(dir, NAME, flags, Mode::from_raw_mode(0o600))?);
    at::unlinkat(dir, NAME, AtFlags::empty())?;
    Ok(())
}

/// Unlinks a file or link; missing is fine.
fn remove_entry(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match at::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

fn entries(dir: &impl AsFd) -> io::Result<Vec<(OsString, FileType)>> {
    let mut names = Vec::new();
    for entry in at::Dir::read_from(dir)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push((name.to_os_string(), entry.file_type()));
        }
    }
    Ok(names)
}

fn remove_tree(parent: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    match at::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) if depth > 0 => {}
        Err(errno) => return Err(errno.into()),
    }
    {
        let dir = open_folder(parent, name)?;
        for (entry, _) in entries(&dir)? {
            remove_tree(&dir, &entry, depth - 1)?;
        }
    }
    match at::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Removes `name` if it is a folder holding nothing but (empty) folders; files are never removed.
fn remove_empty_tree(parent: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    {
        let dir = open_folder(parent, name)?;
        for (entry, kind) in entries(&dir)? {
            if !kind.is_dir() || depth == 0 {
                return Err(Errno::NOTEMPTY.into());
            }
            remove_empty_tree(&dir, &entry, depth - 1)?;
        }
    }
    at::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

/// The user who ran `sudo`, when we run as root under it.
fn invoking_user() -> Option<(Uid, Gid)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((Uid::from_raw(uid), Gid::from_raw(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUSTED: [(u32, u32); 2] = [(0, 0), (1000, 1000)];

    #[test]
    fn a_folder_of_root_or_the_invoking_user_writable_by_no_one_else_is_safe() {
        assert_eq!(unsafe_folder(0, 0, 0o40755, &TRUSTED), None);
        assert_eq!(unsafe_folder(0, 0, 0o40775, &TRUSTED), None, "root's own group");
        assert_eq!(unsafe_folder(1000, 1000, 0o40775, &TRUSTED), None, "the user's own group");
        assert_eq!(unsafe_folder(1000, 0, 0o40755, &TRUSTED), None, "a group that cannot write");
    }

    #[test]
    fn a_folder_is_made_for_the_invoking_user_only_where_they_could_make_it() {
        let user = (Uid::from_raw(1000), Gid::from_raw(1000));
        assert!(may_make_in(1000, 1000, 0o40755, user), "their own folder");
        assert!(may_make_in(0, 0, 0o41777, user), "a folder anyone may write in, like /tmp");
        assert!(may_make_in(0, 1000, 0o40775, user), "their group's");
        assert!(!may_make_in(0, 0, 0o40755, user), "root's, like /etc/systemd/system");
        assert!(!may_make_in(0, 1000, 0o40755, user), "their group's, read-only");
        assert!(!may_make_in(1000, 1000, 0o40555, user), "their own, read-only");
    }

    #[test]
    fn anyone_else_owning_or_writing_makes_a_folder_unsafe() {
        assert!(unsafe_folder(1001, 1001, 0o40755, &TRUSTED).unwrap().contains("belongs to uid 1001"));
        assert!(unsafe_folder(0, 0, 0o41777, &TRUSTED).unwrap().contains("anyone (mode 1777)"));
        assert!(unsafe_folder(0, 0, 0o40757, &TRUSTED).unwrap().contains("anyone"));
        assert!(unsafe_folder(0, 100, 0o40775, &TRUSTED).unwrap().contains("group 100, not its owner's"));
        assert!(unsafe_folder(1000, 0, 0o40775, &TRUSTED).unwrap().contains("group 0"));
    }
}
