//! Whole-map reads in batches (BPF_MAP_LOOKUP_BATCH): thousands of entries a system call. aya 0.14 reads a
//! hash map with two calls per entry (next key, then its value), and the allocator's per-site figures are
//! read every tick: with tens of thousands of sites that was most of the tracer's CPU in a long soak.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData},
};

/// `bpf(2)` command number of BPF_MAP_LOOKUP_BATCH (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call. A hash map's batch ends at a bucket's end: a bucket with more entries than
/// this gives ENOSPC, and the call is retried with room for twice as many.
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a (not per-CPU) hash map, in batches; when the kernel cannot (before 5.6, or refused),
/// entry by entry as before. Entries removed or added meanwhile may be missed or seen, as with any
/// iteration of a map that changes.
pub fn read_all<K: Pod + Default, V: Pod + Default>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    match read_in_batches(map.map()) {
        Ok(entries) => entries,
        Err(_) => map.iter().filter_map(Result::ok).collect(),
    }
}

fn read_in_batches<K: Pod + Default, V: Pod + Default>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut entries = Vec::new();
    let mut room = BATCH;
    // The position between calls: a bucket index for hash maps (4 bytes); room for a key, to be safe.
    let mut token = [0u8; 64];
    let mut started = false;
    loop {
        let mut keys = vec![K::default(); room];
        let mut values = vec![V::default(); room];
        let mut next = [0u8; 64];
        let mut attr = BatchAttr {
            in_batch: if started { token.as_ptr() as u64 } else { 0 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `room` keys and values of the map's own types (aya checked
        // their sizes against the map's when it was typed), and at token buffers larger than a bucket index.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                let count = (attr.count as usize).min(room);
                entries.extend(keys.into_iter().zip(values).take(count));
                if error.is_some() {
                    return Ok(entries); // ENOENT: no entries past these
                }
                token = next;
                started = true;
            }
            Some(libc::ENOSPC) if room < 1 << 20 => room *= 2,
            _ => return Err(error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO))),
        }
    }
}
