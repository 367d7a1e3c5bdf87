//! Storage: the behaviour both implementations share, and the crash and fault semantics of
//! the in-memory one.

use afterlog::storage::{
    CrashMode, FsStorage, LOCK_FILE, MemStorage, OpKind, SECTOR_BYTES, Storage, StorageFile,
    read_exact_at,
};
use std::io;

fn read_all(file: &dyn StorageFile) -> Vec<u8> {
    let mut buf = vec![0; file.len().unwrap() as usize];
    read_exact_at(file, &mut buf, 0).unwrap();
    buf
}

fn names(storage: &dyn Storage) -> Vec<String> {
    let mut names: Vec<String> = storage
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n != LOCK_FILE)
        .collect();
    names.sort();
    names
}

/// Writes `data` to a new file `name` and syncs the file and the directory.
fn durable_file(storage: &dyn Storage, name: &str, data: &[u8]) -> Box<dyn StorageFile> {
    let file = storage.create(name).unwrap();
    file.write_all_at(data, 0).unwrap();
    file.sync_data().unwrap();
    storage.sync_dir().unwrap();
    file
}

fn contents(storage: &dyn Storage, name: &str) -> Vec<u8> {
    read_all(&*storage.open(name).unwrap())
}

fn assert_simulated_crash(result: io::Result<impl std::fmt::Debug>) {
    let err = result.expect_err("the disk has crashed");
    assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("simulated crash"), "{err}");
}

fn assert_injected(result: io::Result<impl std::fmt::Debug>) {
    let err = result.expect_err("an injected error");
    assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("injected I/O error"), "{err}");
}

/// The behaviour every `Storage` must have.
fn conformance(storage: &dyn Storage) {
    assert!(names(storage).is_empty());

    // Create, write, read, sync.
    let a = storage.create("a").unwrap();
    assert_eq!(a.len().unwrap(), 0);
    a.write_all_at(b"hello", 0).unwrap();
    assert_eq!(a.len().unwrap(), 5);
    assert_eq!(read_all(&*a), b"hello");
    a.sync_data().unwrap();
    assert_eq!(
        storage.create("a").unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        storage.open("missing").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // Reads past the end return 0; writes past the end zero-fill the gap.
    let mut buf = [0u8; 4];
    assert_eq!(a.read_at(&mut buf, 5).unwrap(), 0);
    assert_eq!(a.read_at(&mut buf, 1000).unwrap(), 0);
    a.write_all_at(b"xyz", 8).unwrap();
    assert_eq!(read_all(&*a), b"hello\0\0\0xyz");
    a.write_all_at(b"", 100).unwrap();
    assert_eq!(a.len().unwrap(), 11, "an empty write does not extend");

    // set_len shrinks and zero-fills when it grows.
    a.set_len(3).unwrap();
    a.set_len(6).unwrap();
    assert_eq!(read_all(&*a), b"hel\0\0\0");

    // Maps are of a prefix, and not beyond the end.
    // SAFETY: nothing writes or shrinks the file while these maps live (each is dropped at
    // once).
    unsafe {
        assert_eq!(&*a.map(4).unwrap(), b"hel\0");
        assert!(a.map(0).unwrap().is_empty());
        assert!(a.map(7).is_err());
    }

    // Another handle sees the same file.
    let a2 = storage.open("a").unwrap();
    assert_eq!(read_all(&*a2), b"hel\0\0\0");
    drop(a2);

    // Rename, and rename replacing a file.
    storage.rename("a", "b").unwrap();
    assert_eq!(names(storage), ["b"]);
    assert_eq!(
        storage.open("a").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    let c = storage.create("c").unwrap();
    c.write_all_at(b"old c", 0).unwrap();
    storage.rename("b", "c").unwrap();
    assert_eq!(names(storage), ["c"]);
    assert_eq!(contents(storage, "c"), b"hel\0\0\0");
    assert_eq!(read_all(&*c), b"old c", "a replaced file stays readable");
    assert!(storage.rename("nope", "x").is_err());

    // Remove: an open handle keeps working.
    storage.remove("c").unwrap();
    assert!(names(storage).is_empty());
    assert_eq!(read_all(&*a), b"hel\0\0\0");
    a.write_all_at(b"H", 0).unwrap();
    a.sync_data().unwrap();
    assert_eq!(read_all(&*a), b"Hel\0\0\0");
    assert_eq!(
        storage.remove("c").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    storage.sync_dir().unwrap();

    // The lock is exclusive until its guard is dropped.
    let guard = storage.try_lock().unwrap().expect("the lock is free");
    assert!(storage.try_lock().unwrap().is_none());
    drop(guard);
    assert!(storage.try_lock().unwrap().is_some());
}

#[test]
fn conformance_fs() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&FsStorage::new(dir.path()).unwrap());
}

/// What readers open: a directory on a read-only mount, or of read-only files, must work,
/// so nothing may even ask for write access.
#[test]
fn existing_fs_storage_never_asks_for_write_access() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"bytes").unwrap();
    let storage = FsStorage::existing(dir.path()).unwrap();
    let file = storage.open("a").unwrap();
    assert_eq!(read_all(&*file), b"bytes");
    let refused = |r: io::Result<()>| {
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    };
    refused(file.write_all_at(b"x", 0));
    refused(file.set_len(0));
    refused(storage.create("b").map(|_| ()));
    refused(storage.rename("a", "b"));
    refused(storage.remove("a"));
    refused(storage.sync_dir());
    refused(storage.try_lock().map(|_| ()));
    assert_eq!(
        names(&storage),
        ["a"],
        "nothing was created, not even {LOCK_FILE}"
    );
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"bytes");
}

#[test]
fn conformance_mem() {
    conformance(&MemStorage::new());
}

#[test]
fn mem_clones_share_the_disk_and_report_a_fake_path() {
    let disk = MemStorage::new();
    let clone = disk.clone();
    durable_file(&disk, "f", b"x");
    assert_eq!(names(&clone), ["f"]);
    assert_eq!(clone.path(), std::path::Path::new("/mem"));
    assert!(format!("{disk:?}").contains("MemStorage"));
}

#[test]
fn synced_data_survives_every_mode() {
    for seed in 0..8 {
        for mode in CrashMode::all_for(seed) {
            for lose_dir_ops in [true, false] {
                let disk = MemStorage::new();
                let f = durable_file(&disk, "f", b"synced bytes");
                f.write_all_at(b"unsynced tail", 12).unwrap();
                let after = disk.after_crash_with(mode, lose_dir_ops);
                let got = contents(&after, "f");
                assert_eq!(&got[..12], b"synced bytes", "{mode:?}");
            }
        }
    }
}

#[test]
fn unsynced_data_is_lost_under_drop_unsynced() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"synced");
    f.write_all_at(b"-more", 6).unwrap();
    f.write_all_at(b"S", 0).unwrap();
    f.set_len(100).unwrap();
    assert_eq!(contents(&disk, "f").len(), 100, "reads see unsynced state");
    let after = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(contents(&after, "f"), b"synced");
}

#[test]
fn tear_keeps_exactly_keep_bytes_of_the_last_write() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"0123");
    f.write_all_at(b"abcd", 4).unwrap();
    f.write_all_at(b"WXYZ", 2).unwrap();
    disk.crash_now();
    assert_eq!(disk.last_unsynced_write_len(), Some(4));
    assert_eq!(disk.interrupted_write_len(), None);
    let expected: [&[u8]; 5] = [
        b"0123abcd",
        b"01W3abcd",
        b"01WXabcd",
        b"01WXYbcd",
        b"01WXYZcd",
    ];
    for (keep, want) in expected.iter().enumerate() {
        let after = disk.after_crash(CrashMode::TearLastWrite { keep });
        assert_eq!(contents(&after, "f"), *want, "keep {keep}");
    }
    let all = disk.after_crash(CrashMode::TearLastWrite { keep: usize::MAX });
    assert_eq!(contents(&all, "f"), b"01WXYZcd");
}

#[test]
fn tear_applies_to_the_last_write_on_the_whole_disk() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"");
    let g = durable_file(&disk, "g", b"");
    f.write_all_at(b"ffff", 0).unwrap();
    g.write_all_at(b"gggg", 0).unwrap();
    f.write_all_at(b"FF", 4).unwrap();
    g.set_len(2).unwrap();
    let after = disk.after_crash(CrashMode::TearLastWrite { keep: 1 });
    assert_eq!(contents(&after, "f"), b"ffffF");
    assert_eq!(contents(&after, "g"), b"gg", "unsynced set_len survives");
}

#[test]
fn crash_at_interrupts_a_write_that_a_tear_may_keep_part_of() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"head"); // ops 1..=4
    assert_eq!(disk.ops(), 4);
    disk.crash_at(6);
    f.write_all_at(b"-one", 4).unwrap(); // op 5
    assert_simulated_crash(f.write_all_at(b"-two", 8)); // op 6
    assert!(disk.crashed());
    assert_eq!(disk.interrupted_write_len(), Some(4));
    assert_eq!(disk.last_unsynced_write_len(), Some(4));
    let len = disk.interrupted_write_len().unwrap();
    for keep in 0..=len {
        let after = disk.after_crash(CrashMode::TearLastWrite { keep });
        let mut want = b"head-one".to_vec();
        want.extend_from_slice(&b"-two"[..keep]);
        assert_eq!(contents(&after, "f"), want, "keep {keep}");
    }
    let dropped = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(contents(&dropped, "f"), b"head");
}

#[test]
fn crash_at_fails_the_op_and_every_later_call() {
    let disk = MemStorage::new();
    let f = disk.create("f").unwrap(); // op 1
    disk.crash_at(3);
    f.write_all_at(b"a", 0).unwrap(); // op 2
    assert_simulated_crash(disk.rename("f", "g")); // op 3: no effect
    assert_eq!(disk.ops(), 3);
    assert_simulated_crash(f.write_all_at(b"b", 1));
    assert_simulated_crash(f.set_len(0));
    assert_simulated_crash(f.sync_data());
    assert_simulated_crash(f.read_at(&mut [0; 1], 0));
    assert_simulated_crash(f.len());
    // SAFETY: nothing maps anything (the disk has crashed), and memory maps are copies.
    assert_simulated_crash(unsafe { f.map(0) });
    assert_simulated_crash(disk.create("x"));
    assert_simulated_crash(disk.open("f"));
    assert_simulated_crash(disk.list());
    assert_simulated_crash(disk.remove("f"));
    assert_simulated_crash(disk.sync_dir());
    assert_simulated_crash(disk.try_lock());
    assert_eq!(disk.ops(), 3, "calls after the crash are not numbered");
    let after = disk.after_crash_with(CrashMode::TearLastWrite { keep: 1 }, false);
    assert_eq!(names(&after), ["f"], "the rename never happened");
    assert_eq!(contents(&after, "f"), b"a");
}

#[test]
fn would_survive_copies_what_a_crash_leaves_and_the_disk_goes_on() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"synced");
    f.write_all_at(b"-more", 6).unwrap();
    let unsynced = disk.create("g").unwrap();
    unsynced.write_all_at(b"new file", 0).unwrap();
    unsynced.sync_data().unwrap();
    let copy = disk.would_survive(CrashMode::DropUnsynced, true);
    assert_eq!(names(&copy), ["f"], "g's directory entry was never synced");
    assert_eq!(contents(&copy, "f"), b"synced");
    let copy = disk.would_survive(CrashMode::DropUnsynced, false);
    assert_eq!(names(&copy), ["f", "g"]);
    assert_eq!(contents(&copy, "g"), b"new file");
    // The disk has not crashed: it keeps its unsynced writes and takes more.
    assert!(!disk.crashed());
    assert_eq!(contents(&disk, "f"), b"synced-more");
    f.sync_data().unwrap();
    let copy = disk.would_survive(CrashMode::DropUnsynced, true);
    assert_eq!(contents(&copy, "f"), b"synced-more");
}

#[test]
fn a_recovered_disk_is_fresh_and_independent() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"abc");
    let _guard = disk.try_lock().unwrap().unwrap();
    disk.fail_from(1);
    disk.set_short_reads(true);
    let after = disk.after_crash(CrashMode::DropUnsynced);
    assert!(!after.crashed());
    assert_eq!(after.ops(), 0);
    assert!(after.try_lock().unwrap().is_some(), "the lock is free");
    let g = after.open("f").unwrap();
    g.write_all_at(b"X", 0).unwrap();
    g.sync_data().unwrap();
    let mut buf = [0; 3];
    assert_eq!(g.read_at(&mut buf, 0).unwrap(), 3, "no short reads");
    assert_eq!(after.ops(), 2);
    // The crashed disk can be recovered again, unchanged.
    let again = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(contents(&again, "f"), b"abc");
    assert_simulated_crash(f.len());
}

#[test]
fn torn_sector_keeps_keep_bytes_then_zeros_to_the_sector_end() {
    let sector = SECTOR_BYTES as usize;
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", &[7; 100]);
    f.write_all_at(&[1; 1000], 100).unwrap();
    disk.crash_now();
    for keep in [0, 1, 300, 411, 412, 413, 999, 1000, 5000] {
        let after = disk.after_crash(CrashMode::TornSectorZeros { keep });
        let got = contents(&after, "f");
        let kept = keep.min(1000);
        let tear = 100 + kept;
        let end = if kept == 1000 {
            1100
        } else {
            ((tear / sector + 1) * sector).min(1100)
        };
        assert_eq!(got.len(), end, "keep {keep}");
        assert!(got[..100].iter().all(|&b| b == 7));
        assert!(got[100..tear].iter().all(|&b| b == 1), "keep {keep}");
        assert!(got[tear..].iter().all(|&b| b == 0), "keep {keep}");
    }
}

#[test]
fn torn_sector_inside_a_file_zeroes_only_the_written_part_of_the_sector() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", &[7; 2048]);
    f.write_all_at(&[1; 1024], 256).unwrap();
    let after = disk.after_crash(CrashMode::TornSectorZeros { keep: 10 });
    let got = contents(&after, "f");
    assert_eq!(got.len(), 2048);
    assert!(got[..256].iter().all(|&b| b == 7));
    assert!(got[256..266].iter().all(|&b| b == 1));
    assert!(got[266..512].iter().all(|&b| b == 0));
    assert!(
        got[512..].iter().all(|&b| b == 7),
        "old bytes after the sector"
    );
}

#[test]
fn garbage_changes_only_unsynced_ranges() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", &[7; 300]);
    f.write_all_at(&[0; 50], 100).unwrap();
    f.write_all_at(&[0; 64], 400).unwrap();
    let g = durable_file(&disk, "g", b"untouched");
    drop(g);
    let mode = CrashMode::GarbageAfterSynced { seed: 42 };
    let got = contents(&disk.after_crash(mode), "f");
    assert_eq!(got.len(), 464);
    assert!(got[..100].iter().all(|&b| b == 7));
    assert!(got[150..300].iter().all(|&b| b == 7));
    assert!(got[300..400].iter().all(|&b| b == 0), "a hole reads zeros");
    assert!(got[100..150].iter().filter(|&&b| b != 0).count() > 40);
    assert!(got[400..].iter().filter(|&&b| b != 0).count() > 50);
    assert_eq!(got, contents(&disk.after_crash(mode), "f"), "deterministic");
    let other = contents(
        &disk.after_crash(CrashMode::GarbageAfterSynced { seed: 43 }),
        "f",
    );
    assert_ne!(got, other);
    assert_eq!(contents(&disk.after_crash(mode), "g"), b"untouched");
}

#[test]
fn directory_operations_are_lost_without_sync_dir() {
    let disk = MemStorage::new();
    durable_file(&disk, "kept", b"k");
    durable_file(&disk, "removed", b"r");
    durable_file(&disk, "renamed", b"n");
    // A file created and synced, but whose entry never was.
    let new = disk.create("new").unwrap();
    new.write_all_at(b"data", 0).unwrap();
    new.sync_data().unwrap();
    disk.remove("removed").unwrap();
    disk.rename("renamed", "moved").unwrap();

    let strict = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(names(&strict), ["kept", "removed", "renamed"]);
    assert_eq!(contents(&strict, "removed"), b"r");
    assert_eq!(contents(&strict, "renamed"), b"n");

    let lenient = disk.after_crash_with(CrashMode::DropUnsynced, false);
    assert_eq!(names(&lenient), ["kept", "moved", "new"]);
    assert_eq!(contents(&lenient, "new"), b"data");
}

#[test]
fn sync_dir_makes_directory_operations_durable() {
    let disk = MemStorage::new();
    durable_file(&disk, "a", b"a");
    durable_file(&disk, "b", b"b");
    disk.rename("a", "b").unwrap();
    disk.sync_dir().unwrap();
    let after = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(names(&after), ["b"]);
    assert_eq!(contents(&after, "b"), b"a");
}

#[test]
fn a_removed_file_with_an_open_handle_survives_until_the_dir_is_synced() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"v1");
    disk.remove("f").unwrap();
    f.write_all_at(b"v2", 0).unwrap();
    f.sync_data().unwrap();
    assert_eq!(read_all(&*f), b"v2");
    let after = disk.after_crash(CrashMode::DropUnsynced);
    assert_eq!(contents(&after, "f"), b"v2", "the old entry comes back");
    disk.crash_at(u64::MAX);
    let disk = after;
    let f = disk.open("f").unwrap();
    disk.remove("f").unwrap();
    disk.sync_dir().unwrap();
    assert_eq!(read_all(&*f), b"v2");
    drop(f);
    assert!(names(&disk.after_crash(CrashMode::DropUnsynced)).is_empty());
}

#[test]
fn fail_once_fails_one_op_without_effect() {
    let disk = MemStorage::new();
    let f = disk.create("f").unwrap(); // op 1
    disk.fail_once(2);
    assert_injected(f.write_all_at(b"lost", 0)); // op 2
    assert_eq!(f.len().unwrap(), 0);
    f.write_all_at(b"ok", 0).unwrap(); // op 3
    assert_eq!(read_all(&*f), b"ok");
    disk.fail_once(4);
    assert_injected(disk.create("g")); // op 4
    assert_eq!(names(&disk), ["f"]);
    disk.create("g").unwrap(); // op 5
    assert_eq!(disk.ops(), 5);
}

#[test]
fn fail_from_fails_every_later_mutation_but_not_reads() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"abc"); // ops 1..=4
    disk.fail_from(5);
    assert_injected(f.write_all_at(b"x", 0));
    assert_injected(f.set_len(0));
    assert_injected(f.sync_data());
    assert_injected(disk.create("g"));
    assert_injected(disk.rename("f", "g"));
    assert_injected(disk.remove("f"));
    assert_injected(disk.sync_dir());
    assert_eq!(read_all(&*f), b"abc");
    assert_eq!(names(&disk), ["f"]);
    assert!(!disk.crashed());
}

#[test]
fn a_failed_sync_drops_the_pending_writes_for_good() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"base");
    f.write_all_at(b"-lost", 4).unwrap();
    disk.fail_sync_once();
    assert_injected(f.sync_data());
    // The page cache still shows the write, and a retried sync "succeeds"...
    assert_eq!(read_all(&*f), b"base-lost");
    f.sync_data().unwrap();
    f.write_all_at(b"!", 9).unwrap();
    f.sync_data().unwrap();
    // ...but the write never reached the disk.
    for mode in CrashMode::all_for(1) {
        let after = disk.after_crash(mode);
        assert_eq!(contents(&after, "f"), b"base\0\0\0\0\0!", "{mode:?}");
    }
}

#[test]
fn fail_once_on_a_sync_also_drops_the_pending_writes() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"base"); // ops 1..=4
    f.write_all_at(b"+", 4).unwrap(); // op 5
    disk.fail_once(6);
    assert_injected(f.sync_data());
    f.sync_data().unwrap();
    let all = disk.after_crash(CrashMode::TearLastWrite { keep: usize::MAX });
    assert_eq!(contents(&all, "f"), b"base");
}

#[test]
fn short_reads_are_reassembled_by_read_exact_at() {
    let disk = MemStorage::new();
    let data: Vec<u8> = (0..=255).cycle().take(10_000).collect();
    let f = durable_file(&disk, "f", &data);
    disk.set_short_reads(true);
    let mut short = 0;
    for _ in 0..100 {
        let mut buf = vec![0; 1000];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert!((1..=1000).contains(&n));
        assert_eq!(buf[..n], data[..n]);
        short += usize::from(n < 1000);
    }
    assert!(short > 90, "reads are short: {short}");
    assert_eq!(
        f.read_at(&mut [0; 8], 10_000).unwrap(),
        0,
        "0 only at the end"
    );
    let mut buf = vec![0; 9_000];
    read_exact_at(&*f, &mut buf, 1_000).unwrap();
    assert_eq!(buf, data[1_000..]);
    let err = read_exact_at(&*f, &mut [0; 10], 9_995).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn the_lock_is_held_until_the_guard_drops() {
    let disk = MemStorage::new();
    let clone = disk.clone();
    let guard = disk.try_lock().unwrap().unwrap();
    assert!(clone.try_lock().unwrap().is_none(), "clones share the lock");
    assert!(MemStorage::new().try_lock().unwrap().is_some(), "per disk");
    drop(guard);
    assert!(clone.try_lock().unwrap().is_some());
}

#[test]
fn a_map_is_a_snapshot() {
    let disk = MemStorage::new();
    let f = durable_file(&disk, "f", b"sealed");
    // SAFETY: in memory a map is a copy, so the write below (which `map`'s contract forbids
    // for real files) cannot change it: that is what this test shows.
    let map = unsafe { f.map(6) }.unwrap();
    f.write_all_at(b"XXXXXX", 0).unwrap();
    assert_eq!(&*map, b"sealed");
    assert_eq!(read_all(&*f), b"XXXXXX");
}

#[test]
fn wild_offsets_are_errors_not_panics() {
    let disk = MemStorage::new();
    let f = disk.create("f").unwrap();
    assert_eq!(
        f.write_all_at(b"x", u64::MAX).unwrap_err().kind(),
        io::ErrorKind::FileTooLarge
    );
    assert!(f.write_all_at(b"x", u64::MAX - 1).is_err());
    assert!(f.set_len(u64::MAX).is_err());
    assert_eq!(f.read_at(&mut [0; 4], u64::MAX).unwrap(), 0);
    // SAFETY: the map fails; nothing is mapped.
    assert!(unsafe { f.map(u64::MAX) }.is_err());
    assert_eq!(f.len().unwrap(), 0);
    disk.rename("f", "f").unwrap();
    assert_eq!(names(&disk), ["f"]);
}

#[test]
fn the_trace_numbers_every_mutation() {
    let disk = MemStorage::new();
    disk.record_trace(true);
    let f = disk.create("f").unwrap();
    f.write_all_at(b"abc", 7).unwrap();
    f.sync_data().unwrap();
    disk.rename("f", "g").unwrap();
    disk.sync_dir().unwrap();
    let kinds: Vec<(u64, OpKind)> = disk.trace().iter().map(|e| (e.op, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, OpKind::Create),
            (2, OpKind::Write),
            (3, OpKind::SyncData),
            (4, OpKind::Rename),
            (5, OpKind::SyncDir)
        ]
    );
    let write = &disk.trace()[1];
    assert_eq!((write.name.as_str(), write.offset, write.len), ("f", 7, 3));
    assert!(disk.trace_text().contains("f -> g"));
}

#[test]
fn every_crash_point_recovers_to_a_prefix() {
    // A toy log: each append is written then synced; after any crash under any mode, the
    // synced appends survive whole and at most one more follows, possibly torn.
    let appends: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 700]).collect();
    let run = |disk: &MemStorage| -> io::Result<()> {
        let f = disk.create("log")?;
        disk.sync_dir()?;
        let mut offset = 0;
        for a in &appends {
            f.write_all_at(a, offset)?;
            f.sync_data()?;
            offset += a.len() as u64;
        }
        Ok(())
    };
    let total_ops = {
        let disk = MemStorage::new();
        run(&disk).unwrap();
        disk.ops()
    };
    let mut states = 0;
    for crash in 1..=total_ops + 1 {
        let disk = MemStorage::new();
        disk.crash_at(crash);
        let _ = run(&disk);
        let synced = (crash.saturating_sub(3) / 2) as usize;
        for mode in CrashMode::all_for(crash) {
            states += 1;
            let after = disk.after_crash(mode);
            let Ok(log) = after.open("log") else {
                assert!(crash <= 2, "the log exists once its entry is synced");
                continue;
            };
            let got = read_all(&*log);
            let whole: Vec<u8> = appends[..synced].concat();
            assert_eq!(got[..whole.len()], whole, "crash {crash} {mode:?}");
            assert!(got.len() <= whole.len() + 700, "crash {crash} {mode:?}");
        }
    }
    assert!(states > 50);
}

#[test]
fn many_appends_and_recoveries_stay_cheap() {
    // Appending with a sync after each write must not copy the whole file each time, and a
    // recovery copies only files with unsynced writes.
    let disk = MemStorage::new();
    let sealed = durable_file(&disk, "sealed", &vec![9; 4 << 20]);
    drop(sealed);
    let f = durable_file(&disk, "active", b"");
    let record = [5u8; 100];
    for i in 0..20_000u64 {
        f.write_all_at(&record, i * 100).unwrap();
        f.sync_data().unwrap();
    }
    f.write_all_at(&record, 2_000_000).unwrap();
    for keep in 0..=100 {
        let after = disk.after_crash(CrashMode::TearLastWrite { keep });
        assert_eq!(
            after.open("active").unwrap().len().unwrap(),
            2_000_000 + keep as u64
        );
        assert_eq!(after.open("sealed").unwrap().len().unwrap(), 4 << 20);
    }
}
