//! Keeping a long-lived helper small. A `shim run` helper lives as long as its container
//! (and `shim pause` as long as its pod), but almost everything it touched was for
//! creating the container: libcontainer's heap
//! and the code and read-only data that creating faulted in. On a kernel with large
//! page-cache folios (ext4, xfs) a single fault in the agent binary maps a whole folio,
//! so a helper that ran a few hundred kilobytes of code shows megabytes of its 160 MB
//! binary as resident.
//!
//! [`release`] hands that back a little after the container started ([`RELEASE_DELAY`]):
//! the freed heap goes back to the kernel, and the page-table entries of clean, read-only
//! file mappings are dropped (the pages stay in the page cache, shared with the agent and
//! the other helpers) with those mappings marked for random access, so that later faults
//! map only the pages the helper really uses. Mappings with private copies (relocated data, anything written)
//! are never touched: dropping those would lose their contents.

/// How long after its container (or pod sandbox) started a helper waits before it calls
/// [`release`]. Reading `smaps` and dropping the mappings costs most of a millisecond of
/// CPU; done at once, that is CPU taken from the pods a node brings up in the same burst,
/// and the time in which a short-lived container's helper does not notice its exit. A
/// second later a burst is over, or the container with it.
pub const RELEASE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A mapping [`release`] may drop: its address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// Gives the memory that creating the container needed back to the kernel, as the
/// module doc says. Best effort: whatever fails only leaves the helper bigger.
pub fn release() {
    release_heap();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for mapping in droppable(&smaps) {
        drop_mapping(mapping);
    }
}

/// The clean, read-only, private file mappings of an smaps text (see proc(5)): file-backed
/// (inode not 0), not writable, and without anonymous (copied-on-write) pages.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut found = Vec::new();
    let mut current: Option<Droppable> = None;
    for line in smaps.lines() {
        if let Some(mapping) = header(line) {
            current = mapping;
            continue;
        }
        let Some(rest) = line.strip_prefix("Anonymous:") else {
            continue;
        };
        let anonymous_kb: u64 = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if let Some(mapping) = current.take() {
            if anonymous_kb == 0 {
                found.push(mapping);
            }
        }
    }
    found
}

/// Parses an smaps header line (`start-end perms offset dev inode [path]`): `None` when
/// the line is not a header, `Some(None)` for a header of a mapping not to drop.
fn header(line: &str) -> Option<Option<Droppable>> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let (_offset, _dev) = (fields.next()?, fields.next()?);
    let inode = fields.next()?;
    if perms.len() != 4 || inode.parse::<u64>().is_err() {
        return None;
    }
    let clean_private_file = inode != "0"
        && perms.starts_with('r')
        && !perms.contains('w')
        && perms.ends_with('p')
        && end > start;
    Some(clean_private_file.then_some(Droppable {
        start,
        len: end - start,
    }))
}

#[allow(unsafe_code)]
fn drop_mapping(mapping: Droppable) {
    use nix::sys::mman::{madvise, MmapAdvise};
    let Some(addr) = std::ptr::NonNull::new(mapping.start as *mut std::ffi::c_void) else {
        return;
    };
    // SAFETY: the range is one whole mapping of this process, private, read-only and
    // without a single copied-on-write page (smaps said so, and this single-threaded
    // helper has not written to it since, as it cannot). Dropping its page-table entries
    // loses nothing: every page reads back from the file on its next access.
    unsafe {
        let _ = madvise(addr, mapping.len, MmapAdvise::MADV_RANDOM);
        let _ = madvise(addr, mapping.len, MmapAdvise::MADV_DONTNEED);
    }
}

/// Hands the freed heap back to the kernel.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn release_heap() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own allocator state,
    // under the allocator's locks, and the helper is single-threaded here.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn release_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5584f164f000-5584f1651000 r--p 00000000 fe:00 247282                     /usr/bin/agent
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5584f1651000-5584f1657000 r-xp 00002000 fe:00 247282                     /usr/bin/agent
Rss:                  24 kB
Anonymous:             0 kB
5584f1657000-5584f1659000 r--p 00008000 fe:00 247282                     /usr/bin/agent
Rss:                   8 kB
Anonymous:             8 kB
5584f1659000-5584f165a000 rw-p 0000a000 fe:00 247282                     /usr/bin/agent
Anonymous:             0 kB
5584f2000000-5584f2021000 rw-p 00000000 00:00 0                          [heap]
Anonymous:           132 kB
7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0                            [vdso]
Anonymous:             0 kB
7f0000000000-7f0000001000 r--s 00000000 00:05 1234                       /dev/shm/x
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_dropped() {
        assert_eq!(
            droppable(SMAPS),
            vec![
                Droppable {
                    start: 0x5584_f164_f000,
                    len: 0x2000
                },
                Droppable {
                    start: 0x5584_f165_1000,
                    len: 0x6000
                },
            ]
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_kept() {
        let truncated =
            "5584f164f000-5584f1651000 r--p 00000000 fe:00 247282 /usr/bin/agent\nRss: 8 kB\n";
        assert!(droppable(truncated).is_empty());
    }
}
