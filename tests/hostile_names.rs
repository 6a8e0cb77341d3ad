//! Names as bytes, member lists and the extractor's bookkeeping against
//! hostile archives a public-key holder can seal, and the trees a files
//! source can meet.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use coffer::pipeline::restore::walk::walk_archive;
use common::*;
use sha2::{Digest, Sha256};

/// (name bytes, tar type, link target, data)
type Raw<'a> = (&'a [u8], tar::EntryType, Option<&'a str>, &'a [u8]);

/// A GNU header with `name` exactly as given (no tidying by the tar crate).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, e: &Raw<'_>) {
    let (name, kind, link, data) = *e;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn kind_of(k: tar::EntryType) -> &'static str {
    match k {
        tar::EntryType::Directory => "dir",
        tar::EntryType::Symlink => "symlink",
        _ => "file",
    }
}

/// A tar of `entries` and a MANIFEST.json that lists each entry (one
/// logical member per entry, with its SHA-256), as a forger with the public
/// key writes it. `logical` overrides the listed members when parts join.
fn forged_tar(entries: &[Raw<'_>], logical: Option<Vec<serde_json::Value>>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        raw_entry(&mut b, e);
    }
    let members = logical.unwrap_or_else(|| {
        entries
            .iter()
            .map(|(n, k, _, d)| {
                let mut v = serde_json::json!({
                    "path": String::from_utf8_lossy(n), "kind": kind_of(*k), "size": d.len(),
                    "sha256": hex::encode(Sha256::digest(d)),
                });
                if std::str::from_utf8(n).is_err() {
                    use base64::Engine;
                    v["path_b64"] = base64::engine::general_purpose::STANDARD.encode(n).into();
                }
                v
            })
            .collect()
    });
    close_with_manifest(b, members)
}

/// Appends MANIFEST.json listing `members` and closes the archive.
fn close_with_manifest(
    mut b: tar::Builder<Vec<u8>>,
    members: impl Into<serde_json::Value>,
) -> Vec<u8> {
    let members: serde_json::Value = members.into();
    let manifest = serde_json::json!({
        "format": "coffer-manifest/1", "name": "prod-20261123T000000Z", "job": "prod",
        "created": "2026-11-23T00:00:00.000Z", "tool_version": "0", "host": "h",
        "sources": [], "members": members,
    });
    let m = serde_json::to_vec(&manifest).unwrap();
    raw_entry(
        &mut b,
        &(b"MANIFEST.json", tar::EntryType::Regular, None, &m),
    );
    b.into_inner().unwrap()
}

/// The walk (what verify and restore's first pass run) refuses the archive;
/// `out` is what restore said, for the message.
fn assert_walk_refuses(tar_bytes: &[u8], out: &std::process::Output) {
    let walked = walk_archive(tar_bytes, coffer::manifest::HashKind::Sha256, |_, _| Ok(()));
    assert!(
        walked.is_err(),
        "the walk accepts; restore exit {}: {}",
        code(out),
        stderr(out)
    );
}

struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        Env { dir, key }
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
    fn seal(&self, tar_bytes: &[u8], name: &str) -> PathBuf {
        let text = fs::read_to_string(format!("{}.pub", self.key.display())).unwrap();
        let recipients =
            coffer::envelope::parse_recipients_file(&text, &coffer::envelope::no_passphrase())
                .unwrap();
        let meta = coffer::envelope::Metadata {
            created: "2026-11-22T00:00:00Z".into(),
            job: Some("prod".into()),
            compression: Some("none".into()),
            content: Some("tar".into()),
            ..Default::default()
        };
        let mut w = coffer::envelope::seal(&recipients, meta, 65536, Vec::new()).unwrap();
        w.write_all(tar_bytes).unwrap();
        let p = self.p().join(format!("{name}.coffer"));
        fs::write(&p, w.finish().unwrap()).unwrap();
        p
    }
    fn restore_to(&self, sealed: &Path, target: &Path, force: bool) -> std::process::Output {
        let mut args = vec![
            "restore",
            "-i",
            self.key(),
            sealed.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        coffer(&args)
    }
}

/// Two members whose names differ in bytes but that the extractor writes to
/// one path (`//`, `./`, a trailing slash, `/./`) pass the walk — which
/// refuses "a name twice" — so verify and restore's authenticating pass say
/// the backup is good, and then restore fails (or, with --force, the later
/// member silently replaces the earlier). The walk must refuse them as it
/// refuses one name twice.
#[test]
fn names_the_extractor_writes_to_one_path_are_refused_by_the_walk() {
    let cases: &[(&str, &[Raw<'_>])] = &[
        (
            "double-slash",
            &[
                (b"files/a", tar::EntryType::Regular, None, b"one"),
                (b"files//a", tar::EntryType::Regular, None, b"two"),
            ],
        ),
        (
            "dot-slash",
            &[
                (b"files/a", tar::EntryType::Regular, None, b"one"),
                (b"./files/a", tar::EntryType::Regular, None, b"two"),
            ],
        ),
        (
            "inner-dot",
            &[
                (b"files/a", tar::EntryType::Regular, None, b"one"),
                (b"files/./a", tar::EntryType::Regular, None, b"two"),
            ],
        ),
        (
            "trailing-slash",
            &[
                (b"files/a", tar::EntryType::Regular, None, b"one"),
                (b"files/a/", tar::EntryType::Regular, None, b"two"),
            ],
        ),
        (
            // A member the extractor writes where MANIFEST.json goes.
            "manifest-alias",
            &[(b"./MANIFEST.json", tar::EntryType::Regular, None, b"{}")],
        ),
    ];
    let e = Env::new();
    for (name, entries) in cases {
        let tar_bytes = forged_tar(entries, None);
        // End to end: the authenticating pass accepts, the writing pass then
        // fails — what `verify` reports good cannot be restored.
        let sealed = e.seal(&tar_bytes, name);
        let target = e.p().join(format!("t-{name}"));
        let out = e.restore_to(&sealed, &target, false);
        let walked = walk_archive(
            &tar_bytes[..],
            coffer::manifest::HashKind::Sha256,
            |_, _| Ok(()),
        );
        assert!(
            walked.is_err(),
            "{name}: the walk (verify) accepts an archive restore then {}: {}",
            if out.status.success() {
                "takes".to_owned()
            } else {
                format!("refuses (exit {})", code(&out))
            },
            stderr(&out)
        );
    }
}

/// With --force, the second alias replaces the first: the archive verified
/// as holding `files/a` = "one" restores `files/a` = "two".
#[test]
fn with_force_an_alias_silently_replaces_a_verified_member() {
    let e = Env::new();
    let entries: &[Raw<'_>] = &[
        (b"files/a", tar::EntryType::Regular, None, b"one"),
        (b"files//a", tar::EntryType::Regular, None, b"two"),
    ];
    let sealed = e.seal(&forged_tar(entries, None), "force-alias");
    let target = e.p().join("t");
    let out = e.restore_to(&sealed, &target, true);
    assert!(
        !out.status.success(),
        "restored, files/a = {:?}",
        fs::read_to_string(target.join("files/a")).unwrap_or_default()
    );
}

/// Parts after the first of a split stream are not checked for kind: a
/// stream whose part 1 is a directory entry (or part 0 a directory) passes
/// the walk and fails the restore.
#[test]
fn a_split_stream_part_of_another_kind_is_refused_by_the_walk() {
    let big = vec![b'x'; 10];
    for (name, entries) in [
        (
            "part1-dir",
            vec![
                (
                    &b"mysql/x.sql.000000"[..],
                    tar::EntryType::Regular,
                    None,
                    &big[..],
                ),
                (b"mysql/x.sql.000001", tar::EntryType::Directory, None, b""),
            ],
        ),
        (
            "part0-dir",
            vec![
                (b"mysql/x.sql.000000", tar::EntryType::Directory, None, b""),
                (
                    b"mysql/x.sql.000001",
                    tar::EntryType::Regular,
                    None,
                    &big[..],
                ),
            ],
        ),
    ] {
        let kind = if name == "part0-dir" { "dir" } else { "stream" };
        let logical = vec![serde_json::json!({
            "path": "mysql/x.sql", "kind": kind, "size": 10,
            "sha256": hex::encode(Sha256::digest(&big)),
            "parts": ["mysql/x.sql.000000", "mysql/x.sql.000001"],
        })];
        let tar_bytes = forged_tar(&entries, Some(logical));
        let e = Env::new();
        let sealed = e.seal(&tar_bytes, name);
        let out = e.restore_to(&sealed, &e.p().join("t"), false);
        let walked = walk_archive(
            &tar_bytes[..],
            coffer::manifest::HashKind::Sha256,
            |_, _| Ok(()),
        );
        assert!(
            walked.is_err(),
            "{name}: the walk accepts; restore exit {}: {}",
            code(&out),
            stderr(&out)
        );
    }
}

/// `restore --stdout --member NAME` matches the lossy name: two members
/// whose names differ only in bytes that are not UTF-8 both match, and their
/// contents come out concatenated as if one file. Written by coffer itself
/// for a tree holding `\xff` and `\xfe`.
#[test]
fn member_to_stdout_does_not_concatenate_lossy_equal_names() {
    let entries: &[Raw<'_>] = &[
        (b"files/t/\xff", tar::EntryType::Regular, None, b"first\n"),
        (b"files/t/\xfe", tar::EntryType::Regular, None, b"second\n"),
    ];
    let tar_bytes = forged_tar(entries, None);
    walk_archive(
        &tar_bytes[..],
        coffer::manifest::HashKind::Sha256,
        |_, _| Ok(()),
    )
    .expect("a well-formed archive");
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "lossy");
    let out = coffer(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
        "--member",
        "files/t/\u{fffd}",
    ]);
    assert_ne!(
        out.stdout, b"first\nsecond\n",
        "two files written out as one"
    );
}

/// A configured path through a symlink and `..` is named by its text
/// (`/t/a/link/..` becomes `/t/a`) but walked as the kernel resolves it
/// (the link target's parent): the backup holds another directory's files
/// under `/t/a`, and `/t/a` itself, configured too, is dropped as "already
/// in the backup".
#[test]
fn a_configured_path_through_a_link_and_dotdot_backs_up_what_its_name_says() {
    let e = Env::new();
    let t = e.p().join("t");
    fs::create_dir_all(t.join("a")).unwrap();
    fs::create_dir_all(t.join("other/sub")).unwrap();
    fs::write(t.join("a/precious"), "in /t/a").unwrap();
    fs::write(t.join("other/secret"), "in /t/other").unwrap();
    symlink(t.join("other/sub"), t.join("a/link")).unwrap();
    let cfg = e.p().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{via}\", \"{a}\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
            key = e.key(),
            dir = e.p().display(),
            via = t.join("a/link/..").display(),
            a = t.join("a").display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = e.p().join("restored");
    let out = coffer(&[
        "restore",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        e.key(),
        "latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let under = target.join(format!("files/tree{}", t.join("a").display()));
    assert!(
        !under.join("secret").exists(),
        "/t/other's files restored as /t/a's"
    );
    assert_eq!(
        fs::read_to_string(under.join("precious")).ok().as_deref(),
        Some("in /t/a"),
        "/t/a's own files are not in the backup"
    );
}

/// A configured path under another configured path that is a symlink
/// (`/t/a -> real`, and `/t/a/x`) is dropped as "already in the backup under
/// /t/a" — but /t/a is backed up as a link, not followed: /t/a/x's files are
/// in no backup, and the run succeeds.
#[test]
fn a_configured_path_under_a_configured_symlink_is_not_silently_dropped() {
    let e = Env::new();
    let t = e.p().join("t");
    fs::create_dir_all(t.join("real/x")).unwrap();
    fs::write(t.join("real/x/f"), "data").unwrap();
    symlink(t.join("real"), t.join("a")).unwrap();
    let cfg = e.p().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{a}\", \"{x}\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
            key = e.key(),
            dir = e.p().display(),
            a = t.join("a").display(),
            x = t.join("a/x").display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    if !out.status.success() {
        eprintln!("backup refused: {}", stderr(&out));
        return; // refused loudly: fine
    }
    let member = format!("files/tree{}", t.join("a/x/f").display());
    let out = coffer(&[
        "restore",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        e.key(),
        "latest",
        "--stdout",
        "--member",
        &member,
    ]);
    assert!(
        out.status.success() && out.stdout == b"data",
        "the backup succeeded without {member}: {}",
        stderr(&out)
    );
}

/// A sealed archive of a few hundred kilobytes whose one member has a GNU
/// long name of a gigabyte: the tar reader takes the whole name into
/// memory, and the walk copies it four times more (lossy form, the name,
/// the running member, the pending list) — no bound on a name's length or on
/// the bytes of the names held. Under a 1 GiB address-space limit restore
/// should refuse the archive (exit 3); it dies instead.
#[test]
fn a_tiny_archive_with_a_huge_long_name_is_refused_not_fatal() {
    let name_len: u64 = std::env::var("REVIEW_NAME_LEN").map_or(1 << 30, |v| v.parse().unwrap());
    let e = Env::new();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    {
        let mut b = tar::Builder::new(&mut enc);
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(name_len);
        long.set_mode(0o644);
        long.set_cksum();
        let mut data = std::io::Read::take(
            std::io::Read::chain(&b"files/"[..], std::io::repeat(b'a')),
            name_len,
        );
        b.append(&long, &mut data).unwrap();
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"files");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    let compressed = enc.finish().unwrap();
    let text = fs::read_to_string(format!("{}.pub", e.key.display())).unwrap();
    let recipients =
        coffer::envelope::parse_recipients_file(&text, &coffer::envelope::no_passphrase()).unwrap();
    let meta = coffer::envelope::Metadata {
        created: "2026-11-22T00:00:00Z".into(),
        job: Some("prod".into()),
        compression: Some("zstd".into()),
        content: Some("tar".into()),
        ..Default::default()
    };
    let mut w = coffer::envelope::seal(&recipients, meta, 65536, Vec::new()).unwrap();
    w.write_all(&compressed).unwrap();
    let sealed = e.p().join("longname.coffer");
    fs::write(&sealed, w.finish().unwrap()).unwrap();
    let size = fs::metadata(&sealed).unwrap().len();
    if let Ok(keep) = std::env::var("REVIEW_KEEP") {
        fs::copy(&sealed, &keep).unwrap();
        fs::copy(&e.key, format!("{keep}.key")).unwrap();
    }
    assert!(size < 1 << 20, "{size} bytes sealed");
    let out = std::process::Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg(bin())
        .args(["restore", "-i", e.key(), sealed.to_str().unwrap()])
        .args(["--stdout", "--member", "files"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "a {size}-byte backup: {:?} {}",
        out.status,
        stderr(&out)
    );
}

/// A GNU long name can carry a NUL: the walk takes `files/a\0b` as a name
/// (verify says good), and the restore cannot create it and blames the
/// target (exit 1, "cannot create"), not the archive.
#[test]
fn a_name_with_a_nul_is_refused_by_the_walk() {
    let mut b = tar::Builder::new(Vec::new());
    let name = b"files/a\0b";
    let mut long = tar::Header::new_gnu();
    long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(name.len() as u64 + 1);
    long.set_mode(0o644);
    long.set_cksum();
    b.append(&long, &[&name[..], b"\0"].concat()[..]).unwrap();
    raw_entry(&mut b, &(b"files/a", tar::EntryType::Regular, None, b"x"));
    let tar_bytes = close_with_manifest(
        b,
        serde_json::json!([{"path": "files/a\u{0}b", "kind": "file", "size": 1}]),
    );
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "nul");
    let out = e.restore_to(&sealed, &e.p().join("t"), false);
    assert_walk_refuses(&tar_bytes, &out);
}

/// The inner manifest may take 64 MiB beyond 512 bytes per member *since
/// the last list*: with member lists that is at most ~1024 members, so a
/// source's warnings (one per skipped special file, each naming its path)
/// past ~64 MiB make a backup that succeeds and that no reader will open.
/// Before lists, the allowance grew with every member of the archive.
#[test]
fn a_backup_whose_warnings_pass_64_mib_can_still_be_restored() {
    let e = Env::new();
    let tree = e.p().join("tree");
    let mut deep = tree.clone();
    for i in 0..14 {
        deep.push(format!("{i:02}{}", "d".repeat(248)));
    }
    fs::create_dir_all(&deep).unwrap();
    // 18 500 FIFOs of ~3.8 KB paths: ~70 MB of "skipped" warnings.
    for i in 0..18_500 {
        let p = deep.join(format!("{i:05}{}", "f".repeat(245)));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    fs::write(tree.join("data"), "keep me").unwrap();
    let cfg = e.p().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{tree}\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
            key = e.key(),
            dir = e.p().display(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    if !out.status.success() {
        return; // refused at backup time: fine
    }
    let member = format!("files/tree{}", tree.join("data").display());
    let out = coffer(&[
        "restore",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        e.key(),
        "latest",
        "--stdout",
        "--member",
        &member,
    ]);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "the backup succeeded; restore: {}",
        err.lines()
            .filter(|l| l.contains("error"))
            .map(|l| &l[..l.len().min(400)])
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A command source's member is `command/{name}`, and a name may end in
/// `.` and six digits (`dump.000000`): the reader takes the member for part
/// 0 of a split stream `command/dump`, and the backup that succeeded never
/// reads back. (Not new in this change: split names predate it.)
#[test]
fn a_command_source_named_like_a_part_can_be_restored() {
    let e = Env::new();
    let cfg = e.p().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"command\"\nname = \"dump.000000\"\nargv = [\"sh\", \"-c\", \"echo hello\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
            key = e.key(),
            dir = e.p().display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    if !out.status.success() {
        return; // refused at backup time: fine
    }
    let out = coffer(&[
        "restore",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        e.key(),
        "latest",
        "--stdout",
        "--member",
        "command/dump.000000",
    ]);
    assert!(
        out.status.success() && out.stdout == b"hello\n",
        "the backup succeeded; restore: {}",
        stderr(&out)
    );
}

/// A PAX `path` record beside a GNU long name: the tar crate (the walk, and
/// so verify and restore --to) takes the long name, GNU tar the PAX path —
/// `restore --stdout | tar -x`, as the README suggests, extracts a name the
/// walk never checked. coffer never writes PAX headers.
#[test]
fn a_pax_path_beside_a_long_name_is_refused() {
    fn hdr(name: &[u8], kind: tar::EntryType, size: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }
    let mut b = tar::Builder::new(Vec::new());
    let long = b"files/what-coffer-checked\0";
    b.append(
        &hdr(b"././@LongLink", tar::EntryType::GNULongName, long.len()),
        &long[..],
    )
    .unwrap();
    let rec = b"30 path=files/what-tar-writes\n";
    b.append(
        &hdr(b"PaxHeaders/x", tar::EntryType::XHeader, rec.len()),
        &rec[..],
    )
    .unwrap();
    b.append(&hdr(b"short", tar::EntryType::Regular, 1), &b"x"[..])
        .unwrap();
    let tar_bytes = close_with_manifest(
        b,
        serde_json::json!([{"path": "files/what-coffer-checked", "kind": "file", "size": 1}]),
    );
    let dir = tempfile::tempdir().unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .current_dir(dir.path())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&tar_bytes)?;
            c.wait_with_output()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let walked = walk_archive(
        &tar_bytes[..],
        coffer::manifest::HashKind::Sha256,
        |_, _| Ok(()),
    );
    assert!(
        walked.is_err(),
        "the walk accepts files/what-coffer-checked; GNU tar lists {listed:?}"
    );
}

/// `/t/a` (a symlink, kept as a link) and `/t/a/` (followed: the directory
/// it points to) normalise to one name: one is dropped as "already in the
/// backup", and with it either the link or everything under it.
#[test]
fn a_symlink_configured_with_and_without_a_trailing_slash_is_not_half_dropped() {
    let e = Env::new();
    let t = e.p().join("t");
    fs::create_dir_all(t.join("real")).unwrap();
    fs::write(t.join("real/f"), "data").unwrap();
    symlink(t.join("real"), t.join("a")).unwrap();
    let cfg = e.p().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/coffer.lock\"\nunsigned = true\n\n[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{a}\", \"{a}/\"]\n\n[[store]]\ntype = \"local\"\npath = \"{dir}/store\"\n",
            key = e.key(),
            dir = e.p().display(),
            a = t.join("a").display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "backed up with only a warning: {}",
        stderr(&out)
    );
}

/// A name component longer than any Linux file system takes (255 bytes):
/// the walk accepts it, restore cannot create it and blames the target
/// (exit 1).
#[test]
fn a_name_component_past_255_bytes_is_refused_by_the_walk() {
    let mut b = tar::Builder::new(Vec::new());
    let name = [b"files/".as_slice(), &[b'n'; 300]].concat();
    let mut long = tar::Header::new_gnu();
    long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(name.len() as u64 + 1);
    long.set_mode(0o644);
    long.set_cksum();
    b.append(&long, &[&name[..], b"\0"].concat()[..]).unwrap();
    raw_entry(&mut b, &(b"files/x", tar::EntryType::Regular, None, b"x"));
    let tar_bytes = close_with_manifest(
        b,
        serde_json::json!([{"path": String::from_utf8(name).unwrap(), "kind": "file", "size": 1}]),
    );
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "long-component");
    let out = e.restore_to(&sealed, &e.p().join("t"), false);
    assert_walk_refuses(&tar_bytes, &out);
}

/// Undo removes a tree it made by recursing with a descriptor open per
/// level: a chain of directories deeper than the descriptor limit (1024 by
/// default) is left behind after a failed restore, though nothing in it
/// was there before.
#[test]
fn undo_removes_a_deep_tree_it_made() {
    const DEPTH: usize = 1500;
    let mut b = tar::Builder::new(Vec::new());
    let mut members = Vec::new();
    let mut path = String::from("files");
    for _ in 0..DEPTH {
        path.push_str("/d");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, &path, std::io::empty()).unwrap();
        members.push(serde_json::json!({"path": path, "kind": "dir", "size": 0}));
    }
    // Something the extractor refuses, after the tree: the restore fails
    // and undoes.
    raw_entry(&mut b, &(b"/abs", tar::EntryType::Regular, None, b"x"));
    members.push(
        serde_json::json!({"path": "/abs", "kind": "file", "size": 1,
        "sha256": hex::encode(Sha256::digest(b"x"))}),
    );
    let tar_bytes = close_with_manifest(b, members);
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "deep");
    let target = e.p().join("t");
    let out = std::process::Command::new("prlimit")
        .arg("--nofile=1024")
        .arg(bin())
        .args(["restore", "-i", e.key(), sealed.to_str().unwrap(), "--to"])
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let left: Vec<_> = fs::read_dir(&target)
        .map(|d| d.map(|x| x.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed restore left {left:?} behind");
}

/// One member can name a chain of tens of thousands of new directories. What
/// the extractor keeps of them must grow with the name, not with the sum of
/// all its prefixes (quadratic in the depth: gigabytes at a depth a 1 MiB
/// name allows).
#[test]
fn a_deep_path_costs_memory_in_proportion_to_its_length() {
    let e = Env::new();
    let depth = 20_000;
    let name = format!("files/{}f", "d/".repeat(depth));
    let data = b"deep";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &name, &data[..]).unwrap();
    let members = vec![serde_json::json!({
        "path": name, "kind": "file", "size": data.len(),
        "sha256": hex::encode(Sha256::digest(data)),
    })];
    let sealed = e.seal(&close_with_manifest(b, members), "deep");
    let target = e.p().join("out");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak %M KiB"])
        .arg(bin())
        .args(["restore", "-i", e.key(), sealed.to_str().unwrap()])
        .args(["--to", target.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    // Past PATH_MAX only tools that walk by directory reach it: find
    // -execdir to read it, GNU rm (not the temporary directory's own
    // removal, which recurses) to clear it.
    let restored = sh("find out -name f -type f -execdir cat {} ';'", e.p());
    sh("rm -rf out", e.p());
    assert!(out.status.success(), "{err}");
    assert_eq!(restored.stdout, data);
    let peak: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak ")?.strip_suffix(" KiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {err}"));
    // The prefixes of this name alone add up to about 400 MB.
    assert!(
        peak < 128 << 10,
        "peak RSS {peak} KiB restoring one member {depth} directories deep"
    );
}

/// A name that leaves the target (`..`, or absolute) is refused by restore
/// as damage (exit 3); verify's walk refuses it too, so `verify -i` never
/// calls good what restore will not write.
#[test]
fn a_name_that_leaves_the_target_is_refused_by_the_walk_as_by_restore() {
    let cases: &[(&str, &[u8])] = &[
        ("dotdot", b"files/../../escaped"),
        ("inner-dotdot", b"files/a/../b"),
        ("absolute", b"/etc/escaped"),
    ];
    let e = Env::new();
    for (label, name) in cases {
        let tar_bytes = forged_tar(&[(name, tar::EntryType::Regular, None, b"x")], None);
        let sealed = e.seal(&tar_bytes, label);
        let out = e.restore_to(&sealed, &e.p().join(format!("t-{label}")), false);
        assert_eq!(code(&out), 3, "{label}: restore: {}", stderr(&out));
        assert_walk_refuses(&tar_bytes, &out);
    }
}

/// An archive that makes a symlink and then a member below it contradicts
/// itself: restore refuses it as damage (exit 3, not "the target is in the
/// way"), and the walk refuses it before anything is written.
#[test]
fn a_member_below_the_archives_own_symlink_is_damage_not_the_target() {
    let tar_bytes = forged_tar(
        &[
            (b"files/l", tar::EntryType::Symlink, Some("elsewhere"), b""),
            (b"files/l/x", tar::EntryType::Regular, None, b"x"),
        ],
        None,
    );
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "through-link");
    let target = e.p().join("t");
    let out = e.restore_to(&sealed, &target, false);
    assert_eq!(code(&out), 3, "restore: {}", stderr(&out));
    assert!(
        !stderr(&out).contains("the backup is fine"),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("files/l").exists(), "nothing is left behind");
    assert_walk_refuses(&tar_bytes, &out);
}

/// A tar header whose checksum does not match is damage to the backup: the
/// same exit (3) in restore as in verify's walk.
#[test]
fn a_bad_tar_header_checksum_is_damage_in_restore_as_in_verify() {
    let mut tar_bytes = forged_tar(
        &[(b"files/a", tar::EntryType::Regular, None, b"payload")],
        None,
    );
    // The mode field of the first header: the checksum no longer matches.
    tar_bytes[100] ^= 0x01;
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "bad-cksum");
    let out = e.restore_to(&sealed, &e.p().join("t"), false);
    assert_eq!(code(&out), 3, "restore: {}", stderr(&out));
    assert_walk_refuses(&tar_bytes, &out);
}

/// A file's manifest entry must carry its digest, and only the archive's
/// kind of it: an entry without one would leave the member's content
/// unchecked, and one with both gives a reader two answers (FORMAT.md §5).
#[test]
fn a_file_entry_needs_exactly_one_digest_of_the_archives_kind() {
    let data = b"payload";
    let sha = hex::encode(Sha256::digest(data));
    let cases = [
        (
            "no-digest",
            serde_json::json!([{"path": "files/a", "kind": "file", "size": 7}]),
        ),
        (
            "both",
            serde_json::json!([{"path": "files/a", "kind": "file", "size": 7,
                "sha256": sha, "blake3": hex::encode(blake3::hash(data).as_bytes())}]),
        ),
    ];
    let e = Env::new();
    for (label, members) in cases {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, &(b"files/a", tar::EntryType::Regular, None, data));
        let tar_bytes = close_with_manifest(b, members);
        let sealed = e.seal(&tar_bytes, label);
        let out = e.restore_to(&sealed, &e.p().join(format!("t-{label}")), false);
        assert_eq!(code(&out), 3, "{label}: restore: {}", stderr(&out));
        assert_walk_refuses(&tar_bytes, &out);
    }
}

/// Archives whose tar structure contradicts itself or is cut short, though
/// every byte is authenticated: MANIFEST.json as a directory, a member
/// below a regular file, a symlink where earlier members made a directory,
/// a stream that ends inside a member, a header whose size is no number.
/// Each is damage (exit 3) in restore, and the walk that verify runs
/// refuses it too: one verdict for one archive.
#[test]
fn a_tar_that_contradicts_itself_or_ends_early_is_damage_in_restore_and_verify() {
    let manifest_dir = {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, &(b"files/a", tar::EntryType::Regular, None, b"x"));
        let m = serde_json::to_vec(&serde_json::json!({
            "format": "coffer-manifest/1", "name": "prod-20261123T000000Z", "job": "prod",
            "created": "2026-11-23T00:00:00.000Z", "tool_version": "0", "host": "h",
            "sources": [], "members": [{"path": "files/a", "kind": "file", "size": 1,
                "sha256": hex::encode(Sha256::digest(b"x"))}],
        }))
        .unwrap();
        raw_entry(
            &mut b,
            &(b"MANIFEST.json", tar::EntryType::Directory, None, &m),
        );
        b.into_inner().unwrap()
    };
    let below_a_file = forged_tar(
        &[
            (b"files/a", tar::EntryType::Regular, None, b"x"),
            (b"files/a/x", tar::EntryType::Regular, None, b"y"),
        ],
        None,
    );
    let link_over_dir = forged_tar(
        &[
            (b"files/a/x", tar::EntryType::Regular, None, b"y"),
            (b"files/a", tar::EntryType::Symlink, Some("elsewhere"), b""),
        ],
        None,
    );
    let mut cut = forged_tar(
        &[(b"files/a", tar::EntryType::Regular, None, &[7u8; 2000])],
        None,
    );
    cut.truncate(512 + 1000);
    let mut no_number = forged_tar(
        &[(b"files/a", tar::EntryType::Regular, None, b"payload")],
        None,
    );
    no_number[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&no_number[..512]);
    h.set_cksum();
    no_number[..512].copy_from_slice(h.as_bytes());
    let e = Env::new();
    for (label, tar_bytes) in [
        ("manifest-dir", manifest_dir),
        ("below-a-file", below_a_file),
        ("link-over-dir", link_over_dir),
        ("cut", cut),
        ("no-number", no_number),
    ] {
        let sealed = e.seal(&tar_bytes, label);
        let out = e.restore_to(&sealed, &e.p().join(format!("t-{label}")), false);
        assert_eq!(code(&out), 3, "{label}: restore: {}", stderr(&out));
        assert_walk_refuses(&tar_bytes, &out);
    }
}

/// Members hidden after the end-of-archive blocks are read by no check:
/// `restore --stdout` hands on the archive up to its end and no further,
/// so `tar -x -i` (which reads past zero blocks) cannot unpack them.
#[test]
fn stdout_ends_the_archive_where_the_checks_ended() {
    let mut tar_bytes = forged_tar(&[(b"files/a", tar::EntryType::Regular, None, b"x")], None);
    let mut hidden = tar::Builder::new(Vec::new());
    raw_entry(
        &mut hidden,
        &(
            b"files/hidden",
            tar::EntryType::Regular,
            None,
            b"never checked",
        ),
    );
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    tar_bytes.extend(hidden.into_inner().unwrap());
    let e = Env::new();
    let sealed = e.seal(&tar_bytes, "trailing");
    let out = ok(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
    ]);
    let listed = std::process::Command::new("tar")
        .args(["-t", "-i", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&out.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(names.contains("files/a"), "{names}");
    assert!(names.contains("MANIFEST.json"), "{names}");
    assert!(!names.contains("hidden"), "{names}");
    // Ended as tar ends an archive: two zero blocks.
    assert!(out.stdout.ends_with(&[0u8; 1024]));
}

/// `restore --stdout | tar -x` (the README's way to unpack with plain
/// tools) gets what `--to` would write: no name that leaves the target,
/// and no set-user-ID or set-group-ID bit, whatever a forger sealed.
#[test]
fn stdout_hands_tar_nothing_that_restore_to_would_refuse_or_strip() {
    let e = Env::new();
    // A name that climbs out: refused before its header reaches stdout.
    let climbing = forged_tar(
        &[
            (b"files/ok", tar::EntryType::Regular, None, b"fine"),
            (
                b"files/../../escape",
                tar::EntryType::Regular,
                None,
                b"evil",
            ),
        ],
        None,
    );
    let sealed = e.seal(&climbing, "climbing");
    let out = coffer(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        !out.stdout.windows(6).any(|w| w == b"escape"),
        "the climbing member's header reached stdout"
    );

    // A set-user-ID root file: its mode reaches tar without the bit.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o6755);
    h.set_uid(0);
    h.set_gid(0);
    h.as_gnu_mut().unwrap().name[..11].copy_from_slice(b"files/shell");
    h.set_cksum();
    b.append(&h, &b"#!sh"[..]).unwrap();
    let tar_bytes = close_with_manifest(
        b,
        vec![serde_json::json!({
            "path": "files/shell", "kind": "file", "size": 4,
            "sha256": hex::encode(Sha256::digest(b"#!sh")),
        })],
    );
    let sealed = e.seal(&tar_bytes, "setuid");
    let out = ok(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
    ]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let modes: Vec<(String, u32)> = archive
        .entries()
        .unwrap()
        .map(|x| {
            let x = x.unwrap();
            (
                x.path().unwrap().to_string_lossy().into_owned(),
                x.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes[0], ("files/shell".to_owned(), 0o755), "{modes:?}");
}
