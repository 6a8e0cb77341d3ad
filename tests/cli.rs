//! The command-line contract: exit codes, one-line errors with hints, key file
//! hygiene, and never overwriting.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn keygen_modes_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k");
    let out = ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    assert!(stderr(&out).contains("recipient:   age1"));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(d.join("k.pub"))
        .unwrap()
        .starts_with("age1"));
    let before = fs::read(&key).unwrap();
    let again = coffer(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    assert_eq!(code(&again), 2);
    assert!(stderr(&again).contains("already exists"));
    assert_eq!(fs::read(&key).unwrap(), before);
    // A stray .pub blocks keygen before the private key is written.
    fs::write(d.join("j.pub"), "x").unwrap();
    let blocked = coffer(&[
        "keygen",
        "--type",
        "age",
        "--out",
        d.join("j").to_str().unwrap(),
    ]);
    assert_eq!(code(&blocked), 2);
    assert!(!d.join("j").exists());
}

#[test]
fn rsa_keys_under_2048_bits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = coffer(&[
        "keygen",
        "--bits",
        "1024",
        "--out",
        d.join("k").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("at least 2048"));
    assert!(!d.join("k").exists());
    sh("openssl genrsa -out small.pem 1024 2>/dev/null && openssl rsa -in small.pem -pubout -out small.pub 2>/dev/null", d);
    fs::write(d.join("p"), b"x").unwrap();
    let out = coffer(&[
        "seal",
        "-r",
        d.join("small.pub").to_str().unwrap(),
        "-o",
        d.join("p.coffer").to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("RSA key is 1024 bits"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("p.coffer").exists());
    assert!(!d.join("p.coffer.partial").exists());
}

#[test]
fn readable_identity_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    seal_sample(d, &k.age.1, b"x");
    chmod(&k.age.0, 0o644);
    let out = coffer(&[
        "open",
        "-i",
        k.age.0.to_str().unwrap(),
        d.join("p.coffer").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains("accessible by group or others (mode 0644)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("hint: chmod 600 {}", k.age.0.display())),
        "{err}"
    );
}

#[test]
fn recipients_file_writable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let pubfile = std::path::PathBuf::from(&k.rsa.1);
    chmod(&pubfile, 0o666);
    fs::write(d.join("p"), b"x").unwrap();
    let out = coffer(&[
        "seal",
        "-r",
        &k.rsa.1,
        "-o",
        d.join("p.coffer").to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("chmod go-w"), "{}", stderr(&out));
}

#[test]
fn private_key_given_as_recipient_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    fs::write(d.join("p"), b"x").unwrap();
    let out = coffer(&[
        "seal",
        "-r",
        k.rsa.0.to_str().unwrap(),
        "-o",
        d.join("p.coffer").to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("this is a private key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn open_never_overwrites_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    fs::write(d.join("p"), pattern(500_000, 1)).unwrap();
    let sealed = d.join("p.coffer");
    ok(&[
        "seal",
        "-r",
        &k.rsa.1,
        "-o",
        sealed.to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    // Sealing onto an existing name is refused.
    let again = coffer(&[
        "seal",
        "-r",
        &k.rsa.1,
        "-o",
        sealed.to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    assert_eq!(code(&again), 2);
    // A payload corrupted late: the partial output is removed.
    let mut bytes = fs::read(&sealed).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x40;
    fs::write(d.join("bad.coffer"), &bytes).unwrap();
    let out_path = d.join("restored");
    let out = coffer(&[
        "open",
        "-i",
        k.rsa.0.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        d.join("bad.coffer").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    assert!(err.contains("chunk 7 (byte offset"), "{err}");
    assert!(err.contains("hint: the file is corrupted"), "{err}");
    assert!(!out_path.exists());
    assert!(!d.join("restored.partial").exists());
    // A good open writes a private file.
    ok(&[
        "open",
        "-i",
        k.rsa.0.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::metadata(&out_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn missing_identity_and_recipient_are_usage_errors() {
    let out = coffer(&["seal", "-o", "/nonexistent/x"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("no recipients"));
    let out = coffer(&["open", "x.coffer"]);
    assert_eq!(code(&out), 2, "clap requires -i");
    let out = coffer(&["seal", "-r", "not-a-key", "-o", "/tmp/never"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not a recognised recipient"));
}

#[test]
fn binary_output_to_a_terminal_is_refused() {
    // `script` gives the child a pseudo-terminal as stdout.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("script(1) not available; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    seal_sample(d, &k.age.1, b"x");
    let cmd = format!(
        "{} open -i {} p.coffer; echo \"exit=$?\"",
        bin().display(),
        k.age.0.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refusing to write binary data to a terminal"),
        "{text}"
    );
    assert!(text.contains("exit=2"), "{text}");
}

#[test]
fn inspect_needs_no_key_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("junk"), b"PK\x03\x04 this is a zip").unwrap();
    let out = coffer(&["inspect", d.join("junk").to_str().unwrap()]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("not a coffer file"));
    let out = coffer(&["inspect", d.join("missing").to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("cannot open"));
}

/// A reader that stops reading (`coffer list | head -1`) is no error of
/// coffer's: the command finishes quietly with its own exit code, never a
/// panic (exit 101). The pipe's read end is closed before coffer writes, so
/// every line meets a closed pipe.
#[test]
fn a_closed_stdout_ends_quietly_with_the_commands_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    let recipient = fs::read_to_string(dir.path().join("k.pub")).unwrap();
    let sealed = seal_sample(dir.path(), recipient.trim(), b"data");
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(bin())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    };
    for args in [
        vec!["inspect", sealed.to_str().unwrap()],
        vec!["inspect", "--json", sealed.to_str().unwrap()],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let out = run(&args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // A failing command keeps its own exit code.
    let out = run(&["inspect", dir.path().join("k.pub").to_str().unwrap()]);
    assert_ne!(code(&out), 0);
    assert_ne!(code(&out), 101, "{}", stderr(&out));
}
