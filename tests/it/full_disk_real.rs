//! A full disk and a read-only filesystem for real: a tmpfs of 4 MiB mounted by the test (Linux,
//! as root; skipped loudly otherwise). The store fills it until the kernel says `ENOSPC`: replays
//! keep answering, writes get `Error::StorageFull` with the file's path, and once a ballast file
//! is deleted writes resume by themselves. Then the filesystem is remounted read-only: a store
//! opened on it serves replays and refuses writes with `Error::ReadOnly`, until it is writable.
//!
//! Through the write-ahead log, the disk usually fills when the applier copies acknowledged
//! changes into redb: they are safe in the log, and what the freed space must hold is what redb
//! lacks, which `log_memory` bounds (writers wait beyond it). The test bounds it to 256 KiB, a
//! quarter of the ballast.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture;
use fixture::{Fixture, acquired, key, replay, request, response};
use tollgate::{Error, Health};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(at: &Path, size: &str) -> Result<Self, String> {
        if cfg!(not(target_os = "linux")) {
            return Err("not Linux".into());
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&root.stdout).trim() != "0" {
            return Err("not root (mounting a tmpfs needs it)".into());
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount failed: {status}"));
        }
        Ok(Self(at.to_owned()))
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_real_full_disk_and_a_read_only_filesystem() {
    let fixture = Fixture::new();
    let mount_point = fixture.dir.path().join("small");
    std::fs::create_dir(&mount_point).unwrap();
    let mounted = match Mounted::new(&mount_point, "4m") {
        Ok(mounted) => mounted,
        Err(why) => {
            tollgate::testing::say_skipped(
                "the real-filesystem full-disk test",
                &format!("{why} (the simulated full disk, tests/it/full_disk.rs, ran instead)"),
            );
            return;
        }
    };
    let path = mount_point.join("store.redb");
    let ballast = mount_point.join("ballast");
    std::fs::write(&ballast, vec![7u8; 1024 * 1024]).unwrap();
    let builder = || {
        fixture
            .builder()
            .background_compaction(false)
            .log_memory(256 * 1024)
    };
    let store = builder().open(&path).unwrap();

    let mut acknowledged = Vec::new();
    let mut full = None;
    for n in 0..100_000 {
        let name = format!("k{n}");
        let outcome = store
            .begin(&key(&name), &request("r"))
            .and_then(|begin| acquired(begin).complete(response(&"x".repeat(4000))));
        match outcome {
            Ok(()) => acknowledged.push(name),
            Err(error) => {
                if matches!(store.health(), Health::Degraded { .. }) {
                    full = Some(error);
                    break;
                }
            }
        }
    }
    let full = full.expect("the tmpfs filled up");
    assert!(
        matches!(&full, Error::StorageFull { path: at } if *at == path),
        "{full:?}"
    );
    assert!(acknowledged.len() > 100, "{} written", acknowledged.len());
    for name in &acknowledged {
        replay(store.begin(&key(name), &request("r")).unwrap());
    }
    let refused = store.begin(&key("new"), &request("r")).unwrap_err();
    assert!(matches!(refused, Error::StorageFull { .. }), "{refused:?}");

    // Space returns: writes resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    fixture.clock.advance(Duration::from_secs(2));
    acquired(store.begin(&key("new"), &request("r")).unwrap())
        .complete(response("after"))
        .unwrap();
    assert_eq!(store.health(), Health::Ready);
    store.close().unwrap();

    // A read-only filesystem: the store opens for reads.
    mounted.remount("ro");
    let store = builder()
        .open(&path)
        .expect("an open on a read-only filesystem opens for reads");
    assert!(matches!(store.health(), Health::Degraded { .. }));
    replay(store.begin(&key("new"), &request("r")).unwrap());
    replay(store.begin(&key(&acknowledged[0]), &request("r")).unwrap());
    let refused = store.begin(&key("other"), &request("r")).unwrap_err();
    assert!(matches!(refused, Error::ReadOnly { .. }), "{refused:?}");
    mounted.remount("rw");
    fixture.clock.advance(Duration::from_secs(2));
    acquired(store.begin(&key("other"), &request("r")).unwrap())
        .complete(response("writable again"))
        .unwrap();
    assert_eq!(store.health(), Health::Ready);
    store.close().unwrap();
}

#[test]
fn a_store_file_deleted_while_degraded_is_not_created_again() {
    let fixture = Fixture::new();
    let mount_point = fixture.dir.path().join("small");
    std::fs::create_dir(&mount_point).unwrap();
    let _mounted = match Mounted::new(&mount_point, "2m") {
        Ok(mounted) => mounted,
        Err(why) => {
            tollgate::testing::say_skipped("the deleted-file test", &why);
            return;
        }
    };
    let path = mount_point.join("store.redb");
    let store = fixture
        .builder()
        .background_compaction(false)
        .open(&path)
        .unwrap();
    fixture::write_until_degraded(&store, "k", 4000);
    // Someone deletes the file (and so frees the space): a reopen must not start a new, empty
    // store under the old name, with epochs and lease tokens from the beginning.
    std::fs::remove_file(&path).unwrap();
    fixture.clock.advance(Duration::from_secs(2));
    assert!(store.begin(&key("after"), &request("r")).is_err());
    assert!(!path.exists(), "the deleted store was created again");
    assert!(
        matches!(store.health(), Health::Failed { .. }),
        "{:?}",
        store.health()
    );
    drop(store);
}

/// A store created on a disk with no space left is refused (`StorageFull`, naming the file) and
/// leaves nothing behind: no store file, no half-made `.creating` file, no log.
#[test]
fn creating_a_store_on_a_full_disk_leaves_nothing_behind() {
    let fixture = Fixture::new();
    let mount_point = fixture.dir.path().join("small");
    std::fs::create_dir(&mount_point).unwrap();
    let _mounted = match Mounted::new(&mount_point, "1m") {
        Ok(mounted) => mounted,
        Err(why) => {
            tollgate::testing::say_skipped("the full-disk creation test", &why);
            return;
        }
    };
    // Fill the filesystem to the last byte.
    let ballast = mount_point.join("ballast");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let before: Vec<_> = std::fs::read_dir(&mount_point)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let path = mount_point.join("store.redb");
    let refused = fixture.builder().open(&path).unwrap_err();
    assert!(
        matches!(&refused, Error::StorageFull { path: at } if *at == path),
        "{refused:?}"
    );
    let after: Vec<_> = std::fs::read_dir(&mount_point)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        before, after,
        "the refused creation left files ({refused:?})"
    );
}
