//! Interoperability with the real tools: keys made by `openssl genrsa` and
//! `openssl genpkey`, stanzas unwrapped by `openssl pkeyutl` and `age`, and
//! the independent Python reader.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn openssl_keys(d: &Path) {
    // OpenSSL 3 writes PKCS#8 by default; -traditional gives PKCS#1 as OpenSSL 1.x did.
    sh("openssl genrsa -out pkcs8.pem 2048 2>/dev/null", d);
    sh(
        "openssl genrsa -traditional -out pkcs1.pem 3072 2>/dev/null",
        d,
    );
    sh(
        "openssl rsa -in pkcs8.pem -pubout -out pkcs8.pub.pem 2>/dev/null",
        d,
    );
    sh(
        "openssl rsa -in pkcs1.pem -RSAPublicKey_out -out pkcs1.pub.pem 2>/dev/null",
        d,
    );
    for k in ["pkcs8.pem", "pkcs1.pem"] {
        chmod(&d.join(k), 0o600);
    }
    assert!(fs::read_to_string(d.join("pkcs8.pem"))
        .unwrap()
        .contains("BEGIN PRIVATE KEY"));
    assert!(fs::read_to_string(d.join("pkcs1.pem"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    assert!(fs::read_to_string(d.join("pkcs1.pub.pem"))
        .unwrap()
        .contains("BEGIN RSA PUBLIC KEY"));
}

#[test]
fn openssl_generated_keys_seal_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_keys(d);
    fs::write(d.join("plain"), pattern(300_000, 9)).unwrap();
    ok(&[
        "seal",
        "-r",
        d.join("pkcs8.pub.pem").to_str().unwrap(),
        "-r",
        d.join("pkcs1.pub.pem").to_str().unwrap(),
        "-o",
        d.join("x.coffer").to_str().unwrap(),
        d.join("plain").to_str().unwrap(),
    ]);
    for id in ["pkcs8.pem", "pkcs1.pem"] {
        let out = ok(&[
            "open",
            "-i",
            d.join(id).to_str().unwrap(),
            d.join("x.coffer").to_str().unwrap(),
        ]);
        assert_eq!(out.stdout, fs::read(d.join("plain")).unwrap(), "{id}");
    }
    // The stanza fingerprint is what openssl computes for the public key.
    let fp = sh(
        "openssl pkey -in pkcs8.pem -pubout -outform DER | sha256sum | cut -d' ' -f1",
        d,
    );
    let fp = String::from_utf8(fp.stdout).unwrap();
    let info = ok(&["inspect", d.join("x.coffer").to_str().unwrap()]);
    assert!(stderr(&info).is_empty());
    assert!(
        String::from_utf8_lossy(&info.stdout)
            .contains(&format!("rsa-oaep-sha256 SHA256:{}", fp.trim())),
        "fingerprint {fp} not in inspect output"
    );
}

#[test]
fn openssl_pkeyutl_unwraps_the_data_key_and_python_decrypts_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_keys(d);
    fs::write(d.join("plain"), pattern(200_000, 3)).unwrap();
    ok(&[
        "seal",
        "-r",
        d.join("pkcs1.pub.pem").to_str().unwrap(),
        "-o",
        d.join("x.coffer").to_str().unwrap(),
        d.join("plain").to_str().unwrap(),
    ]);
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/open-coffer.py");
    sh(
        &format!(
            "python3 {} stanza 0 x.coffer > stanza.bin",
            reader.display()
        ),
        d,
    );
    sh(
        "openssl pkeyutl -decrypt -inkey pkcs1.pem -in stanza.bin -out datakey.bin \
         -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256",
        d,
    );
    assert_eq!(fs::metadata(d.join("datakey.bin")).unwrap().len(), 32);
    sh(
        &format!(
            "python3 {} open --data-key datakey.bin -o out x.coffer",
            reader.display()
        ),
        d,
    );
    assert_eq!(
        fs::read(d.join("out")).unwrap(),
        fs::read(d.join("plain")).unwrap()
    );
    // A wrong data key is caught by the header MAC before any payload.
    fs::write(d.join("bad.bin"), [0u8; 32]).unwrap();
    let bad = Command::new("python3")
        .arg(&reader)
        .args(["open", "--data-key", "bad.bin", "x.coffer"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("header authentication failed"));
}

#[test]
fn python_reader_decrypts_rsa_and_age_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/open-coffer.py");
    for (i, size) in [0usize, 1, 65_535, 65_536, 65_537, 1_000_003]
        .into_iter()
        .enumerate()
    {
        fs::write(d.join("plain"), pattern(size, i as u64)).unwrap();
        let sealed = format!("x{i}.coffer");
        ok(&[
            "seal",
            "-r",
            &k.rsa.1,
            "-r",
            &k.age.1,
            "-o",
            d.join(&sealed).to_str().unwrap(),
            d.join("plain").to_str().unwrap(),
        ]);
        let mut ids = vec![k.rsa.0.clone()];
        if Command::new("age").arg("--version").output().is_ok() {
            ids.push(k.age.0.clone());
        }
        for id in ids {
            let out = Command::new("python3")
                .arg(&reader)
                .args(["open", "-i", id.to_str().unwrap(), &sealed])
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.stdout,
                fs::read(d.join("plain")).unwrap(),
                "size {size} with {}",
                id.display()
            );
        }
    }
}

#[test]
fn age_cli_unwraps_an_age_stanza() {
    if Command::new("age").arg("--version").output().is_err() {
        eprintln!("age is not installed (scripts/test.sh installs it); skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    fs::write(d.join("plain"), b"data").unwrap();
    ok(&[
        "seal",
        "-r",
        &k.age.1,
        "-o",
        d.join("x.coffer").to_str().unwrap(),
        d.join("plain").to_str().unwrap(),
    ]);
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/open-coffer.py");
    let out = sh(
        &format!(
            "python3 {} stanza 0 x.coffer | age -d -i {}",
            reader.display(),
            k.age.0.display()
        ),
        d,
    );
    assert_eq!(out.stdout.len(), 32);
}

#[test]
fn encrypted_pkcs8_key_with_passphrase_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("pass"), "correct horse\n").unwrap();
    chmod(&d.join("pass"), 0o600);
    sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes-256-cbc -pass file:pass -out enc.pem", d);
    sh(
        "openssl pkey -in enc.pem -passin file:pass -pubout -out enc.pub.pem",
        d,
    );
    chmod(&d.join("enc.pem"), 0o600);
    assert!(fs::read_to_string(d.join("enc.pem"))
        .unwrap()
        .contains("BEGIN ENCRYPTED PRIVATE KEY"));
    fs::write(d.join("plain"), b"secret payload").unwrap();
    ok(&[
        "seal",
        "-r",
        d.join("enc.pub.pem").to_str().unwrap(),
        "-o",
        d.join("x.coffer").to_str().unwrap(),
        d.join("plain").to_str().unwrap(),
    ]);
    let open = |pass_file: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["open", "-i", "enc.pem", "x.coffer"]).current_dir(d);
        match pass_file {
            Some(p) => c.env("COFFER_PASSPHRASE_FILE", p),
            None => c.env_remove("COFFER_PASSPHRASE_FILE"),
        };
        c.output().unwrap()
    };
    let out = open(Some("pass"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"secret payload");
    // No terminal and no passphrase file: a missing key, exit 4, with the fix.
    let out = open(None);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("COFFER_PASSPHRASE_FILE"));
    fs::write(d.join("wrong"), "nope\n").unwrap();
    chmod(&d.join("wrong"), 0o600);
    let out = open(Some("wrong"));
    assert_eq!(code(&out), 4);
    assert!(stderr(&out).contains("wrong passphrase"));
}

/// A public key given where the private one belongs is named as such, before
/// its (rightly) world-readable mode is complained about.
#[test]
fn a_public_key_given_as_identity_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let sealed = seal_sample(d, &k.rsa.1, b"data");
    let age_pub = d.join("age.key.pub");
    let ssh_pub = d.join("ssh_ed25519.pub");
    for public in [Path::new(&k.rsa.1), &age_pub, &ssh_pub] {
        for mode in [0o644, 0o600] {
            chmod(public, mode);
            let out = coffer(&[
                "open",
                "-i",
                public.to_str().unwrap(),
                sealed.to_str().unwrap(),
            ]);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{}: {err}", public.display());
            assert!(err.contains("this is a public key"), "{err}");
            assert!(err.contains("pass the private key"), "{err}");
            assert!(!err.contains("secrets must be private"), "{err}");
        }
    }
    // A private key with a loose mode is still refused for its mode.
    chmod(&k.rsa.0, 0o644);
    let out = coffer(&[
        "open",
        "-i",
        k.rsa.0.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("secrets must be private"),
        "{}",
        stderr(&out)
    );
}

/// The writer keeps to the reader's cap of 16 RSA stanzas, and seals a key
/// named twice once (the reader refuses two stanzas for one key).
#[test]
fn at_most_16_rsa_recipients_and_a_repeated_key_sealed_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sh(
        "for i in $(seq 1 17); do openssl genrsa -out k$i.pem 2048 2>/dev/null && chmod 600 k$i.pem && openssl rsa -in k$i.pem -pubout -out k$i.pub 2>/dev/null; done && printf data > plain",
        d,
    );
    let seal = |n: usize, out: &str| {
        let mut args = vec!["seal".to_owned()];
        for i in 1..=n {
            args.extend([
                "-r".to_owned(),
                d.join(format!("k{i}.pub")).display().to_string(),
            ]);
        }
        args.extend([
            "-o".to_owned(),
            d.join(out).display().to_string(),
            d.join("plain").display().to_string(),
        ]);
        coffer(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = seal(17, "17.coffer");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("17 recipients (RSA); a file holds at most 16"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("17.coffer").exists());
    let out = seal(16, "16.coffer");
    assert!(out.status.success(), "{}", stderr(&out));
    let last = d.join("k16.pem");
    let sealed = d.join("16.coffer");
    let out = ok(&[
        "open",
        "-i",
        last.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    assert_eq!(out.stdout, b"data");

    let k1 = d.join("k1.pub");
    let twice = d.join("twice.coffer");
    ok(&[
        "seal",
        "-r",
        k1.to_str().unwrap(),
        "-r",
        k1.to_str().unwrap(),
        "-o",
        twice.to_str().unwrap(),
        d.join("plain").to_str().unwrap(),
    ]);
    let inspect = String::from_utf8(ok(&["inspect", twice.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(inspect.matches("rsa-oaep-sha256").count(), 1, "{inspect}");
    let k1_private = d.join("k1.pem");
    let out = ok(&[
        "open",
        "-i",
        k1_private.to_str().unwrap(),
        twice.to_str().unwrap(),
    ]);
    assert_eq!(out.stdout, b"data");
}
