//! What ships beside the binary: systemd units (checked by systemd-analyze
//! where it is available), shell completions and the manual pages, all
//! generated from the real CLI definitions. The .deb itself is built and
//! installed by scripts/test-deb.sh.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const UNITS: [&str; 6] = [
    "coffer-backup.service",
    "coffer-backup.timer",
    "coffer-verify.service",
    "coffer-verify.timer",
    "coffer-drill.service",
    "coffer-drill.timer",
];

/// Copies the units with ExecStart pointing at the binary under test, runs
/// `systemd-analyze verify`, and returns (success, everything it printed).
fn analyze(dir: &Path, edit: impl Fn(&str) -> String) -> (bool, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut paths = Vec::new();
    for u in UNITS {
        let text = fs::read_to_string(src.join(u)).unwrap();
        let text = edit(&text.replace("/usr/bin/coffer", bin().to_str().unwrap()));
        let p = dir.join(u);
        fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if coffer::source::find_program("systemd-analyze").is_none() {
        eprintln!("systemd-analyze is not installed: skipping the unit check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, said) = analyze(dir.path(), str::to_owned);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The check can fail: a bad value is reported (as a warning, which
    // counts), and so is a missing binary.
    let bad = tempfile::tempdir().unwrap();
    let (_, said) = analyze(bad.path(), |t| {
        t.replace("ProtectSystem=strict", "ProtectSystem=sometimes")
    });
    assert!(said.contains("protect system value"), "{said}");
    let (ok, _) = analyze(bad.path(), |t| {
        t.replace(bin().to_str().unwrap(), "/nonexistent/coffer")
    });
    assert!(!ok);
}

#[test]
fn units_have_the_promised_hardening_and_schedule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let backup = fs::read_to_string(dir.join("coffer-backup.service")).unwrap();
    for line in [
        "User=coffer",
        "UMask=0077",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/backups/coffer",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "--metrics-file",
    ] {
        assert!(
            backup.contains(line),
            "coffer-backup.service lacks {line:?}"
        );
    }
    let timer = fs::read_to_string(dir.join("coffer-backup.timer")).unwrap();
    for line in [
        "OnCalendar=*-*-* 00:01:00",
        "Persistent=true",
        "RandomizedDelaySec=",
    ] {
        assert!(timer.contains(line), "coffer-backup.timer lacks {line:?}");
    }
    // The weekly drill: restore-tests the newest backup with the private key.
    let drill = fs::read_to_string(dir.join("coffer-drill.service")).unwrap();
    for line in [
        "User=coffer",
        "UMask=0077",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectHome=yes",
        "SystemCallFilter=@system-service",
        "latest -i /etc/coffer/backup.key --restore-test --metrics-file",
    ] {
        assert!(drill.contains(line), "coffer-drill.service lacks {line:?}");
    }
    let timer = fs::read_to_string(dir.join("coffer-drill.timer")).unwrap();
    for line in ["OnCalendar=Sun *-*-* 07:00:00", "Persistent=true"] {
        assert!(timer.contains(line), "coffer-drill.timer lacks {line:?}");
    }
    let rules = fs::read_to_string(dir.join("coffer.rules.yml")).unwrap();
    assert!(
        rules.contains("time() - coffer_restore_test_last_success_timestamp_seconds > 8 * 86400"),
        "no alert for a drill that has not passed in 8 days"
    );
}

#[test]
fn completions_are_valid_shell_and_know_the_subcommands() {
    let bash = ok(&["completions", "bash"]).stdout;
    let text = String::from_utf8_lossy(&bash);
    assert!(text.contains("backup") && text.contains("--metrics-file"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("coffer.bash");
    fs::write(&f, &bash).unwrap();
    let out = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = ok(&["completions", shell]).stdout;
        assert!(String::from_utf8_lossy(&out).contains("verify"), "{shell}");
    }
    assert_eq!(code(&coffer(&["completions", "tcsh"])), 2);
}

#[test]
fn man_pages_render_for_every_subcommand() {
    let page = ok(&["man"]).stdout;
    let text = String::from_utf8_lossy(&page);
    assert!(
        text.starts_with(".ie") || text.contains(".TH coffer"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for sub in ["backup", "restore", "verify", "keygen", "completions"] {
        let p = dir.path().join(format!("coffer-{sub}.1"));
        let roff = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(roff.contains(&format!("coffer\\-{sub}")), "{sub}");
    }
    if coffer::source::find_program("man").is_some() {
        let out = Command::new("man")
            .args(["-P", "cat", "-l"])
            .arg(dir.path().join("coffer-backup.1"))
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("--metrics-file"), "{shown}");
    }
}
