//! The output folder. Files are written aside and renamed into place, so a reader never sees half a file;
//! under sudo they are handed to the invoking user.

use std::{
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

pub struct OutputDir {
    path: PathBuf,
    owner: Option<(u32, u32)>,
}

impl OutputDir {
    /// Creates the folder (and its parents) and checks that files can be written in it.
    pub fn create(path: &Path) -> Result<Self> {
        let cannot = |error: std::io::Error| {
            anyhow::anyhow!("cannot write the output folder {}: {error}: choose another with -o", path.display())
        };
        fs::create_dir_all(path).map_err(cannot)?;
        let probe = path.join(".leaktrace-write-check");
        fs::write(&probe, b"").map_err(cannot)?;
        let _ = fs::remove_file(&probe);
        let out = Self { path: path.to_path_buf(), owner: invoking_user() };
        out.hand_over(path);
        Ok(out)
    }

    /// A folder inside this one, created and handed over like it.
    pub fn subfolder(&self, relative: &Path) -> Result<Self> {
        let path = self.path.join(relative);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut dir = path.as_path();
        while dir != self.path {
            self.hand_over(dir);
            dir = dir.parent().expect("inside the output folder");
        }
        Ok(Self { path, owner: self.owner })
    }

    /// A folder that appears whole or not at all: the files go into a hidden `.NAME.partial` folder beside
    /// it, which [`OutputDir::publish`] renames. A tracer killed while writing leaves only the partial
    /// folder, which the next publish of that name replaces.
    pub fn partial(&self, relative: &Path) -> Result<(Self, PathBuf)> {
        let target = self.path.join(relative);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = target.parent().unwrap_or(&self.path).to_path_buf();
        let partial = parent.join(format!(".{name}.partial"));
        let _ = fs::remove_dir_all(&partial);
        let dir = self.subfolder(partial.strip_prefix(&self.path).unwrap_or(&partial))?;
        Ok((dir, target))
    }

    /// Renames a partial folder into place.
    pub fn publish(&self, partial: &OutputDir, target: &Path) -> Result<PathBuf> {
        let _ = fs::remove_dir_all(target);
        fs::rename(&partial.path, target).with_context(|| format!("cannot publish {}", target.display()))?;
        self.hand_over(target);
        Ok(target.to_path_buf())
    }

    /// Points the symbolic link `link` (inside this folder) at `target`, replacing it atomically.
    pub fn point(&self, link: &str, target: &Path) -> Result<()> {
        let link_path = self.path.join(link);
        let aside = self.path.join(format!(".{link}.new"));
        let _ = fs::remove_file(&aside);
        let relative = target.strip_prefix(&self.path).unwrap_or(target);
        std::os::unix::fs::symlink(relative, &aside).with_context(|| format!("cannot create {}", aside.display()))?;
        if let Some((uid, gid)) = self.owner {
            let _ = std::os::unix::fs::lchown(&aside, Some(uid), Some(gid));
        }
        fs::rename(&aside, &link_path).with_context(|| format!("cannot update {}", link_path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        self.write_with(name, |out| Ok(out.write_all(bytes)?))
    }

    /// Writes a file through a buffered writer, aside and then renamed into place like [`Self::write`].
    pub fn write_with(&self, name: &str, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<PathBuf> {
        let path = self.path.join(name);
        let aside = self.path.join(format!(".{name}.partial"));
        let file = File::create(&aside).with_context(|| format!("cannot write {}", aside.display()))?;
        let mut out = BufWriter::new(file);
        fill(&mut out).and_then(|()| Ok(out.flush()?)).with_context(|| format!("cannot write {}", aside.display()))?;
        fs::rename(&aside, &path).with_context(|| format!("cannot write {}", path.display()))?;
        self.hand_over(&path);
        Ok(path)
    }

    fn hand_over(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        }
    }
}

/// The user who ran `sudo`, when we run as root under it.
fn invoking_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}
