//! The output folder. Files are written aside and renamed into place, so a reader never sees half a file;
//! under sudo they are handed to the invoking user.

use std::{
    fs,
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.path.join(name);
        let aside = self.path.join(format!(".{name}.partial"));
        fs::write(&aside, bytes).with_context(|| format!("cannot write {}", aside.display()))?;
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
