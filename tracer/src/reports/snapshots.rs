//! Report sets written while the trace goes on: snapshots (`kill -USR1`, `--snapshot-at-rss`) into
//! `OUTPUT/snapshots/<UTC time>-<reason>/`, and checkpoints (`--checkpoint`) into
//! `OUTPUT/checkpoints/<UTC time>/`, the last `--keep` of them kept and `OUTPUT/latest` pointing at the
//! newest. Each folder appears whole or not at all (written aside, then renamed), so a tracer killed in the
//! middle of a write leaves the previous ones intact.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Result;

use super::{ReportOptions, output::OutputDir, write_all};
use crate::{collector::SnapshotReason, collector::Trace, probes::ProbeInfo};

/// `20261128T031500.123Z`: sorts in time order and is valid in a file name.
pub fn stamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string().replace(['-', ':'], "")
}

/// Writes the report set for `reason`; returns the folder.
pub fn write(
    trace: &Trace<'_>,
    reason: SnapshotReason,
    probes: &ProbeInfo,
    options: &ReportOptions,
    out: &OutputDir,
    keep: usize,
) -> Result<PathBuf> {
    let relative = match reason {
        SnapshotReason::Checkpoint => Path::new("checkpoints").join(stamp(trace.ended_at)),
        _ => Path::new("snapshots").join(format!("{}-{}", stamp(trace.ended_at), reason.name())),
    };
    let (partial, target) = out.partial(&relative)?;
    write_all(trace, probes, options, &[], &partial)?;
    let published = out.publish(&partial, &target)?;
    if reason == SnapshotReason::Checkpoint {
        prune(&out.path().join("checkpoints"), keep);
        out.point("latest", &published)?;
    }
    Ok(published)
}

/// Keeps the newest `keep` checkpoints (their names sort by time); partial folders are left alone.
fn prune(checkpoints: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(checkpoints) else { return };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for old in &names[..excess] {
        let _ = std::fs::remove_dir_all(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_and_skips_partial_folders() {
        let dir = std::env::temp_dir().join(format!("leaktrace-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in
            ["20261128T010000.000Z", "20261128T020000.000Z", "20261128T030000.000Z", ".20261128T040000.000Z.partial"]
        {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        prune(&dir, 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".20261128T040000.000Z.partial", "20261128T020000.000Z", "20261128T030000.000Z"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
