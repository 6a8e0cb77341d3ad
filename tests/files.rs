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
        self.config_of(&[tree])
    }

    /// A job backing up `paths` (one files source) into a local store.
    fn config_of(&self, paths: &[&Path]) -> PathBuf {
        let p = self.path().join("coffer.toml");
        let paths: Vec<String> = paths
            .iter()
            .map(|t| format!("\"{}\"", t.display()))
            .collect();
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [{paths}]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
                key = self.key.display(),
                dir = self.path().display(),
                paths = paths.join(", "),
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }

    /// Verifies the latest backup with the key (every member against the
    /// manifest) and restores it into `restored`, which it returns.
    fn verify_and_restore(&self, config: &Path) -> PathBuf {
        let key = self.key.to_str().unwrap();
        let cfg = config.to_str().unwrap();
        let out = ok(&["verify", "-c", cfg, "-i", key, "latest", "--json"]);
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reports[0]["ok"], true, "{reports}");
        assert_eq!(reports[0]["level"], "keyed", "{reports}");
        let to = self.path().join("restored");
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
        to
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
        let dec = coffer::archive::decompressor(
            &out.stdout[..],
            coffer::archive::Compression::Zstd(3),
            None,
        )
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
    let to = s.verify_and_restore(&cfg);
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

/// Everything a restore must give back of one entry, read without following
/// links: type, mode, mtime, and the content or link target.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Link(Vec<u8>),
}

/// Every entry under `root` by its name's bytes (relative), with its mode
/// and mtime; `expect_restored` gives the mode a restore must write (no
/// set-id bits, the sticky bit kept on directories).
fn snapshot(root: &Path, expect_restored: bool) -> Vec<(Vec<u8>, Kind, u32, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = meta.file_type();
            let (kind, mut mode) = if ft.is_symlink() {
                let t = fs::read_link(&path).unwrap();
                (Kind::Link(t.as_os_str().as_bytes().to_vec()), 0)
            } else if ft.is_dir() {
                stack.push(path.clone());
                (Kind::Dir, meta.mode() & 0o7777)
            } else if ft.is_file() {
                (Kind::File(fs::read(&path).unwrap()), meta.mode() & 0o7777)
            } else {
                continue; // skipped by the backup, with a warning
            };
            if expect_restored {
                mode &= if kind == Kind::Dir { 0o1777 } else { 0o777 };
            }
            out.push((rel, kind, mode, meta.mtime()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `touch -h`: sets the mtime of a link itself (or of anything).
fn touch(p: &Path, secs: i64) {
    let st = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Under `x`: every kind of entry and name coffer keeps, and a FIFO it
/// skips, with mtimes of their own.
fn every_kind_of_entry(x: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir(x).unwrap();
    let name = |b: &[u8]| x.join(std::ffi::OsStr::from_bytes(b));
    // Names: not UTF-8 (two that collide once lossy), Latin-1, control
    // characters, a newline, a long name and a long path.
    for (n, data) in [
        (&b"\xff"[..], &b"ff"[..]),
        (b"\xfe", b"fe"),
        (b"caf\xe9", b"latin-1"),
        (b"tab\tand\nnewline", b"odd"),
        (b"back\\slash -dash ", b"odd too"),
        (b"e\xcc\x81-nfd", b"nfd"),
        ("é-nfc".as_bytes(), b"nfc"),
        (b"empty", b""),
    ] {
        fs::write(name(n), data).unwrap();
    }
    fs::write(name(&[b'n'; 250]), "long name").unwrap();
    let deep = x.join(["d".repeat(100), "e".repeat(100), "f".repeat(100)].join("/"));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("g".repeat(100)), "long path").unwrap();
    let odd_dir = name(b"dir-\x80");
    fs::create_dir(&odd_dir).unwrap();
    fs::write(
        odd_dir.join(std::ffi::OsStr::from_bytes(b"in-\x81")),
        "inside",
    )
    .unwrap();
    // Modes: set-id bits on a file are not restored; a sticky directory
    // keeps its bit.
    for (n, mode) in [
        (&b"setuid"[..], 0o4755),
        (b"private", 0o600),
        (b"group", 0o640),
    ] {
        fs::write(name(n), "m").unwrap();
        fs::set_permissions(name(n), fs::Permissions::from_mode(mode)).unwrap();
    }
    for (n, mode) in [(&b"sticky"[..], 0o1777), (b"closed", 0o750)] {
        fs::create_dir(name(n)).unwrap();
        fs::set_permissions(name(n), fs::Permissions::from_mode(mode)).unwrap();
    }
    // Links: relative, absolute, dangling, to a name not UTF-8, and one
    // longer than a tar header's field.
    let long_target = format!("/usr/share/{}/x", "t".repeat(150));
    for (n, target) in [
        (&b"rel"[..], &b"empty"[..]),
        (b"abs", b"/etc/hostname"),
        (b"dangling", b"no/such/file"),
        (b"to-odd", b"\xff"),
        (b"long", long_target.as_bytes()),
    ] {
        symlink(std::ffi::OsStr::from_bytes(target), name(n)).unwrap();
    }
    mkfifo(&x.join("fifo"));
    // Mtimes of all kinds, links included, and of directories last.
    let mut secs = 1_000_000_000;
    for e in fs::read_dir(x).unwrap() {
        secs += 3601;
        touch(&e.unwrap().path(), secs);
    }
    touch(x, 1_234_567_890);
}

/// A copy of the machine's own /etc and /usr/share/zoneinfo (absolute links
/// such as /etc/localtime, systemd's wants links, thousands of files), plus
/// every kind of entry and name coffer keeps, goes through backup and
/// `restore --to` unchanged: names as bytes (not UTF-8, and two that read
/// the same once made lossy), contents, modes, mtimes and link targets. The
/// tree is named twice in the configuration (once inside itself), and is
/// large enough to be listed in several member lists.
#[test]
fn a_copy_of_etc_and_zoneinfo_restores_byte_exact() {
    let s = Setup::new();
    let tree = s.path().join("src");
    fs::create_dir(&tree).unwrap();
    for from in ["/etc", "/usr/share/zoneinfo"] {
        // As a user, what cannot be read (/etc/shadow) is not copied;
        // whatever is copied must come back.
        let _ = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&tree)
            .stderr(Stdio::null())
            .status()
            .unwrap();
    }
    assert!(tree.join("zoneinfo/UTC").exists());
    every_kind_of_entry(&tree.join("extra"));

    let p = s.config_of(&[&tree.join("etc"), &tree]);
    let out = s.backup(&p);
    let err = stderr(&out);
    assert!(err.contains("already in the backup under"), "{err}");
    assert!(err.contains("fifo: skipped (a FIFO"), "{err}");
    let to = s.verify_and_restore(&p);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(to.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "coffer-manifest/2");
    assert!(manifest["member_lists"].as_array().unwrap().len() >= 2);
    let restored = to.join(format!("files/tree{}", tree.display()));
    let want = snapshot(&tree, true);
    let got = snapshot(&restored, false);
    assert!(want.len() > 2000, "{} entries", want.len());
    let names = |v: &[(Vec<u8>, Kind, u32, i64)]| -> Vec<Vec<u8>> {
        v.iter().map(|e| e.0.clone()).collect()
    };
    assert_eq!(names(&got), names(&want), "the same names, as bytes");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "{}", String::from_utf8_lossy(&w.0));
    }
}
