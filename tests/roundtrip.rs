//! Seal and open through the real binary, at every size that matters for the
//! chunking, with one and three recipients of mixed types.

mod common;

use std::fs;

use common::*;

const CHUNK: usize = 64 * 1024;

#[test]
fn round_trips_at_chunk_boundaries_with_mixed_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123];
    for (i, size) in sizes.into_iter().enumerate() {
        let plain = d.join(format!("plain{i}"));
        fs::write(&plain, pattern(size, i as u64 + 1)).unwrap();
        // One recipient of each kind alone, then all three together.
        let single: [(&str, &std::path::Path); 3] = [
            (k.rsa.1.as_str(), k.rsa.0.as_path()),
            (k.age.1.as_str(), k.age.0.as_path()),
            (k.ssh.1.as_str(), k.ssh.0.as_path()),
        ];
        for (j, (recipient, identity)) in single.iter().enumerate() {
            let sealed = d.join(format!("s{i}-{j}.coffer"));
            ok(&[
                "seal",
                "-r",
                recipient,
                "-o",
                sealed.to_str().unwrap(),
                plain.to_str().unwrap(),
            ]);
            let opened = d.join(format!("o{i}-{j}"));
            ok(&[
                "open",
                "-i",
                identity.to_str().unwrap(),
                "-o",
                opened.to_str().unwrap(),
                sealed.to_str().unwrap(),
            ]);
            assert_eq!(
                fs::read(&opened).unwrap(),
                fs::read(&plain).unwrap(),
                "size {size} kind {j}"
            );
        }
        let sealed = d.join(format!("s{i}-all.coffer"));
        ok(&[
            "seal",
            "-r",
            &k.rsa.1,
            "-r",
            &k.age.1,
            "-r",
            &k.ssh.1,
            "-o",
            sealed.to_str().unwrap(),
            plain.to_str().unwrap(),
        ]);
        let expected_chunks = size.div_ceil(CHUNK).max(1);
        let info = ok(&["inspect", "--json", sealed.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["recipients"].as_array().unwrap().len(), 3);
        assert_eq!(info["chunks"].as_u64().unwrap(), expected_chunks as u64);
        assert_eq!(info["plaintext_bytes"].as_u64().unwrap(), size as u64);
        for (_, identity) in single {
            let out = ok(&[
                "open",
                "-i",
                identity.to_str().unwrap(),
                sealed.to_str().unwrap(),
            ]);
            assert_eq!(
                out.stdout,
                fs::read(&plain).unwrap(),
                "size {size} with 3 recipients"
            );
        }
    }
}

#[test]
fn hundred_megabytes_round_trip_through_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let plain = d.join("big");
    fs::write(&plain, pattern(100_000_000, 42)).unwrap();
    let bin = bin();
    sh(
        &format!(
            "{b} seal -r {rsa} -r {age} < big > big.coffer && {b} open -i {ai} < big.coffer > big.out",
            b = bin.display(),
            rsa = k.rsa.1,
            age = k.age.1,
            ai = k.age.0.display()
        ),
        d,
    );
    assert_eq!(sha256_file(&d.join("big.out")), sha256_file(&plain));
    let overhead = fs::metadata(d.join("big.coffer")).unwrap().len() - 100_000_000;
    // 1526 chunks × 16-byte tags plus a header of about a kilobyte.
    assert!(overhead < 30_000, "overhead {overhead}");
}

#[test]
fn recipients_file_with_comments_and_pem_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys(d);
    let list = format!(
        "# backup keys\n\n{}\n{}\n# offline RSA key:\n{}",
        k.age.1,
        k.ssh.1,
        fs::read_to_string(&k.rsa.1).unwrap()
    );
    let rfile = d.join("recipients.txt");
    fs::write(&rfile, list).unwrap();
    chmod(&rfile, 0o644);
    fs::write(d.join("p"), b"hello").unwrap();
    let sealed = d.join("p.coffer");
    ok(&[
        "seal",
        "-R",
        rfile.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
        d.join("p").to_str().unwrap(),
    ]);
    let info = ok(&["inspect", "--json", sealed.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let kinds: Vec<_> = info["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["rsa-oaep-sha256", "age", "age"]);
    let out = ok(&[
        "open",
        "-i",
        k.rsa.0.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    assert_eq!(out.stdout, b"hello");
}
