//! The files source against real trees: special files, links inside the
//! tree, and trees of thousands of files, through the real binary.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Setup {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        Setup { dir, key }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A job backing up `tree` into a local store.
    fn config(&self, tree: &Path) -> PathBuf {
        let p = self.path().join("coffer.toml");
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{tree}\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
                key = self.key.display(),
                dir = self.path().display(),
                tree = tree.display(),
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }

    /// Runs a backup, killing it (and failing) if it has not ended in a
    /// minute: a run that blocks on a special file never ends by itself.
    fn backup(&self, config: &Path) -> Output {
        let mut child = Command::new(bin())
            .args(["backup", "-c", config.to_str().unwrap()])
            .env("TMPDIR", self.path())
            .env("XDG_RUNTIME_DIR", self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                let _ = child.wait();
                panic!("the backup did not end within a minute: it blocked");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    }

    /// The tar members of the backup, with their link targets.
    fn members(&self) -> Vec<(String, Option<String>, Vec<u8>)> {
        let sealed = fs::read_dir(self.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".coffer"))
            .expect("a sealed backup");
        let out = ok(&[
            "open",
            "-i",
            self.key.to_str().unwrap(),
            sealed.to_str().unwrap(),
        ]);
        let dec =
            coffer::archive::decompressor(&out.stdout[..], coffer::archive::Compression::Zstd(3))
                .unwrap();
        let mut ar = tar::Archive::new(dec);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, link, data)
            })
            .collect()
    }
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

#[test]
fn a_fifo_in_the_tree_is_skipped_with_a_warning() {
    let s = Setup::new();
    let tree = s.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "kept").unwrap();
    mkfifo(&tree.join("pipe"));
    fs::write(tree.join("z"), "kept too").unwrap();
    let out = s.backup(&s.config(&tree));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}: skipped (a FIFO", tree.join("pipe").display())),
        "{err}"
    );
    let members = s.members();
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert!(!names.iter().any(|n| n.ends_with("/pipe")), "{names:?}");
    let prefix = format!("files/tree{}", tree.display());
    for (name, data) in [("a", "kept"), ("z", "kept too")] {
        let m = members
            .iter()
            .find(|m| m.0 == format!("{prefix}/{name}"))
            .unwrap_or_else(|| panic!("{name} missing from {names:?}"));
        assert_eq!(m.2, data.as_bytes());
    }
    // The warning is kept in the backup's own manifest too.
    let manifest: serde_json::Value = serde_json::from_slice(&members.last().unwrap().2).unwrap();
    let warnings = manifest["sources"][0]["warnings"].to_string();
    assert!(warnings.contains("a FIFO"), "{warnings}");
}

#[test]
fn a_directory_link_in_the_tree_is_stored_as_a_link_never_followed() {
    let s = Setup::new();
    // Root's files, outside the tree a user can write in.
    let private = s.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::write(private.join("shadow"), "root:secret").unwrap();
    chmod(&private.join("shadow"), 0o600);
    let tree = s.path().join("home");
    fs::create_dir_all(tree.join("user")).unwrap();
    fs::write(tree.join("user/notes"), "mine").unwrap();
    std::os::unix::fs::symlink(&private, tree.join("user/docs")).unwrap();
    s.backup(&s.config(&tree));
    let members = s.members();
    let prefix = format!("files/tree{}", tree.display());
    let docs = members
        .iter()
        .find(|m| m.0 == format!("{prefix}/user/docs"))
        .expect("the link is stored");
    assert_eq!(docs.1.as_deref(), Some(private.to_str().unwrap()));
    for (name, _, data) in &members {
        assert!(!name.contains("shadow"), "{name} was read through the link");
        assert!(
            !String::from_utf8_lossy(data).contains("root:secret"),
            "{name} holds the private file"
        );
    }
}

/// Thousands of files in nested directories come back exactly: each file's
/// bytes, and nothing more or less.
#[test]
fn thousands_of_files_restore_and_verify_exactly() {
    let s = Setup::new();
    let tree = s.path().join("data");
    let count = 5_000;
    for i in 0..count {
        let dir = tree.join(format!("d{:02}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(
            dir.join(format!("f{i:05}")),
            format!("file {i}\n").repeat(i % 7),
        )
        .unwrap();
    }
    let cfg = s.config(&tree);
    s.backup(&cfg);
    let key = s.key.to_str().unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = ok(&["verify", "-c", cfg, "-i", key, "latest", "--json"]);
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["ok"], true, "{reports}");
    assert_eq!(reports[0]["level"], "keyed", "{reports}");

    let to = s.path().join("restored");
    ok(&[
        "restore",
        "-c",
        cfg,
        "-i",
        key,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    let root = to.join(format!("files/tree{}", tree.display()));
    let mut found = 0;
    for dir in fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        for file in fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_str().unwrap();
            let i: usize = name[1..].parse().unwrap();
            assert_eq!(
                dir.file_name().unwrap(),
                format!("d{:02}", i / 100).as_str()
            );
            assert_eq!(
                fs::read(&file).unwrap(),
                format!("file {i}\n").repeat(i % 7).as_bytes(),
                "{}",
                file.display()
            );
            assert!(fs::symlink_metadata(&file).unwrap().file_type().is_file());
            assert_eq!(fs::metadata(&file).unwrap().nlink(), 1);
            found += 1;
        }
    }
    assert_eq!(found, count);
}
