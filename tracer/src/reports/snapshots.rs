//! Report sets written while the trace goes on: snapshots (`kill -USR1`, `--snapshot-at-rss`) into
//! `OUTPUT/snapshots/<UTC time>-<reason>/`, and checkpoints (`--checkpoint`) into
//! `OUTPUT/checkpoints/<UTC time>/`, the last `--keep` of them kept and `OUTPUT/latest` pointing at the
//! newest. Each folder appears whole or not at all (written aside, then renamed), so a tracer killed in the
//! middle of a write leaves the previous ones intact.

use std::{path::PathBuf, time::SystemTime};

use anyhow::{Result, anyhow};

use super::{ReportOptions, output::OutputDir, write_set};
use crate::{collector::SnapshotReason, collector::Trace, probes::ProbeInfo};

/// `20261128T031500.123Z`: sorts in time order and is valid in a file name.
pub fn stamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string().replace(['-', ':'], "")
}

/// Whether `name` is one [`stamp`] makes: `DDDDDDDDTDDDDDD.DDDZ`.
pub fn is_checkpoint_name(name: &str) -> bool {
    const SHAPE: &[u8] = b"dddddddd.dddddd.dddZ";
    name.len() == SHAPE.len()
        && name.bytes().zip(SHAPE).enumerate().all(|(index, (byte, shape))| match (index, shape) {
            (8, _) => byte == b'T',
            (_, b'd') => byte.is_ascii_digit(),
            (_, shape) => byte == *shape,
        })
}

/// Whether `name` is a snapshot's folder: a stamp, `-`, the reason (`requested`, `rss-3G`).
pub fn is_snapshot_name(name: &str) -> bool {
    name.split_at_checked(20).is_some_and(|(stamp, reason)| {
        is_checkpoint_name(stamp)
            && reason.strip_prefix('-').is_some_and(|reason| {
                !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    })
}

/// Writes the report set for `reason`; returns the folder. A set some of whose files could not be
/// written is still published when its report.json was (it lists what failed), and the error says so.
pub fn write(
    trace: &Trace<'_>,
    reason: SnapshotReason,
    probes: &ProbeInfo,
    options: &ReportOptions,
    out: &OutputDir,
    keep: usize,
) -> Result<PathBuf> {
    let (folder, name) = match reason {
        SnapshotReason::Checkpoint => ("checkpoints", stamp(trace.ended_at)),
        _ => ("snapshots", format!("{}-{}", stamp(trace.ended_at), reason.name())),
    };
    // Opened anew each time, never through a link: one planted in its place during the run is refused.
    let parent = out.subfolder(folder.as_ref())?;
    let partial = parent.partial(&name)?;
    let set = write_set(trace, probes, options, &[], partial.dir());
    if !set.has_report {
        // Dropping the partial folder removes it: nothing half-written stays.
        let failed = set.into_result(partial.dir().path()).err().unwrap_or_else(|| anyhow!("no report.json"));
        return Err(failed);
    }
    let published = partial.publish()?;
    if reason == SnapshotReason::Checkpoint {
        prune(&parent, keep);
        out.point("latest", &PathBuf::from(folder).join(&name))?;
    }
    set.into_result(&published)?;
    Ok(published)
}

/// Keeps the newest `keep` checkpoints (their names sort by time). Only folders named as the tool names
/// them are removed, by descriptor and never through a link; partial folders are left alone.
fn prune(checkpoints: &OutputDir, keep: usize) {
    let Ok(entries) = checkpoints.entries() else { return };
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|(_, kind)| kind.is_dir())
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| is_checkpoint_name(name))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for old in &names[..excess] {
        if let Err(error) = checkpoints.remove_tree(old) {
            eprintln!(
                "dispatch-leaktrace: warning: cannot remove the old checkpoint {}: {error}",
                checkpoints.path().join(old).display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_and_snapshot_names_are_the_ones_stamp_makes() {
        let now = stamp(SystemTime::now());
        assert!(is_checkpoint_name(&now), "{now}");
        assert!(is_checkpoint_name("20261128T031500.123Z"));
        assert!(is_snapshot_name("20261128T031500.123Z-requested"));
        assert!(is_snapshot_name(&format!("{now}-rss-3G")));
        for other in ["", "20261128T031500.123", "20261128X031500.123Z", "2026112aT031500.123Z", "notes", "..", "a/b"] {
            assert!(!is_checkpoint_name(other) && !is_snapshot_name(other), "{other}");
        }
        assert!(!is_snapshot_name("20261128T031500.123Z-"));
        assert!(!is_snapshot_name("20261128T031500.123Z-a/b"));
        assert!(!is_checkpoint_name("20261128T031500.123Z-requested"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_only_removes_checkpoints() {
        let dir = std::env::temp_dir().join(format!("leaktrace-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = [
            "20261128T010000.000Z",
            "20261128T020000.000Z",
            "20261128T030000.000Z",
            ".20261128T040000.000Z.partial",
            "00000000T000000.000Z-not-ours",
            "notes",
        ];
        for name in names {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("20261128T010000.000Z/report.json"), "{}").unwrap();
        let out = OutputDir::create(&dir, |_| {}).unwrap();
        prune(&out, 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".20261128T040000.000Z.partial",
                "00000000T000000.000Z-not-ours",
                "20261128T020000.000Z",
                "20261128T030000.000Z",
                "notes"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
