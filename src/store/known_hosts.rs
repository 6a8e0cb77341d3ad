//! Matching a server's host key against an OpenSSH `known_hosts` file, with
//! OpenSSH's semantics where libssh2's differ:
//!
//! - The name looked up is `host` on port 22 and `[host]:port` on any other
//!   port, so a plain `host` entry pins port 22 only (libssh2 lets it match
//!   every port).
//! - Host fields are comma-separated patterns with `*`, `?` and `!negation`,
//!   or one hashed name `|1|salt|hash` (`ssh-keygen -H`).
//! - A key on an `@revoked` line is refused whatever other lines say, and for
//!   every host: a compromised key is compromised everywhere, so coffer is
//!   stricter here than OpenSSH, which applies the line's host patterns.
//! - `@cert-authority` lines are recognised but coffer cannot check host
//!   certificates; when they are all that names the host, the host is refused
//!   with that reason instead of as unknown.
//! - A line that cannot be parsed is an error naming it: in this file a
//!   silently skipped line may be a revocation that never takes effect.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// What the file says about the key a server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A plain line for this host holds the key.
    Trusted,
    /// An `@revoked` line holds the key (1-based line number).
    Revoked { line: usize },
    /// Only `@cert-authority` lines name this host (the first one's number).
    CertAuthorityOnly { line: usize },
    /// Lines name this host, with other keys; `ca_lines` says whether
    /// `@cert-authority` lines name it too.
    Changed { ca_lines: bool },
    /// Nothing names this host.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// The name OpenSSH looks up for a host and port.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key type an SSH wire-format public key blob begins with.
fn embedded_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?);
    blob.get(4..4 + usize::try_from(len).ok()?)
}

/// Checks `key` (the SSH wire-format blob) offered by `host`:`port` against
/// the text of a known_hosts file. `Err` names the line that cannot be
/// parsed.
pub fn check(text: &str, host: &str, port: u16, key: &[u8]) -> Result<Verdict, String> {
    let name = lookup_name(host, port).to_ascii_lowercase();
    let mut trusted = false;
    let mut other_keys = false;
    let mut ca_line = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let marker = match first {
            "@revoked" => Marker::Revoked,
            "@cert-authority" => Marker::CertAuthority,
            m if m.starts_with('@') => {
                return Err(format!("line {n}: unknown marker {m}"));
            }
            _ => Marker::None,
        };
        if marker != Marker::None {
            first = fields.next().unwrap_or_default();
        }
        let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "line {n}: expected [marker] hosts key-type base64-key [comment]"
            ));
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("line {n}: the key is not valid base64: {e}"))?;
        // As OpenSSH: the key names its own type, and the line must agree.
        if embedded_type(&blob) != Some(kind.as_bytes()) {
            return Err(format!(
                "line {n}: the key is not a {kind} key, as the line says it is"
            ));
        }
        let same_key = blob.len() == key.len() && bool::from(blob.ct_eq(key));
        if marker == Marker::Revoked {
            if same_key {
                return Ok(Verdict::Revoked { line: n });
            }
            continue;
        }
        if !hosts_match(first, &name).map_err(|e| format!("line {n}: {e}"))? {
            continue;
        }
        match marker {
            Marker::CertAuthority => {
                ca_line.get_or_insert(n);
            }
            _ if same_key => trusted = true,
            _ => other_keys = true,
        }
    }
    // Every line has been read by now: a revocation further down wins.
    Ok(if trusted {
        Verdict::Trusted
    } else if other_keys {
        Verdict::Changed {
            ca_lines: ca_line.is_some(),
        }
    } else if let Some(line) = ca_line {
        Verdict::CertAuthorityOnly { line }
    } else {
        Verdict::Unknown
    })
}

/// Whether a host field matches `name` (already lowercase).
fn hosts_match(field: &str, name: &str) -> Result<bool, String> {
    if let Some(rest) = field.strip_prefix("|1|") {
        return hashed_match(rest, name);
    }
    // OpenSSH's match_pattern_list: any negated match vetoes the line.
    let mut positive = false;
    for pattern in field.split(',') {
        let lower = pattern.to_ascii_lowercase();
        if let Some(negated) = lower.strip_prefix('!') {
            if wildcard(negated.as_bytes(), name.as_bytes()) {
                return Ok(false);
            }
        } else if wildcard(lower.as_bytes(), name.as_bytes()) {
            positive = true;
        }
    }
    Ok(positive)
}

/// `|1|salt|hash`: HMAC-SHA1 keyed with the salt over the looked-up name.
fn hashed_match(rest: &str, name: &str) -> Result<bool, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (salt, hash) = rest
        .split_once('|')
        .ok_or("a hashed host lacks its hash (expected |1|salt|hash)")?;
    let salt = b64
        .decode(salt)
        .map_err(|e| format!("hashed host salt: {e}"))?;
    let hash = b64
        .decode(hash)
        .map_err(|e| format!("hashed host hash: {e}"))?;
    let mut mac =
        Hmac::<Sha1>::new_from_slice(&salt).map_err(|e| format!("hashed host salt: {e}"))?;
    mac.update(name.as_bytes());
    Ok(mac.verify_slice(&hash).is_ok())
}

/// `*` and `?` glob matching, as OpenSSH's match_pattern.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBzZ3vKxhv5iK9U9x1R4m8A6sPjzHc3Zb0rOVEzxaY4T";

    fn blob() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap()
    }

    fn verdict(text: &str, port: u16) -> Verdict {
        check(text, "db1.example", port, &blob()).unwrap()
    }

    #[test]
    fn a_portless_entry_pins_port_22_only() {
        let line = format!("db1.example ssh-ed25519 {KEY}\n");
        assert_eq!(verdict(&line, 22), Verdict::Trusted);
        assert_eq!(verdict(&line, 2222), Verdict::Unknown);
        let line = format!("[db1.example]:2222 ssh-ed25519 {KEY}\n");
        assert_eq!(verdict(&line, 2222), Verdict::Trusted);
        assert_eq!(verdict(&line, 22), Verdict::Unknown);
        assert_eq!(verdict(&line, 2223), Verdict::Unknown);
    }

    #[test]
    fn patterns_lists_and_negation() {
        let t = |hosts: &str, port| verdict(&format!("{hosts} ssh-ed25519 {KEY}"), port);
        assert_eq!(t("other,DB1.example", 22), Verdict::Trusted);
        assert_eq!(t("*.example", 22), Verdict::Trusted);
        assert_eq!(t("db?.example", 22), Verdict::Trusted);
        assert_eq!(t("*.example,!db1.*", 22), Verdict::Unknown);
        assert_eq!(t("[db1.example]:*", 2222), Verdict::Trusted);
        assert_eq!(t("db1.example.evil", 22), Verdict::Unknown);
        assert_eq!(t("db1", 22), Verdict::Unknown);
    }

    #[test]
    fn hashed_names_match_the_port_form() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = [7u8; 20];
        let hashed = |name: &str| {
            let mut mac = Hmac::<Sha1>::new_from_slice(&salt).unwrap();
            mac.update(name.as_bytes());
            format!(
                "|1|{}|{} ssh-ed25519 {KEY}",
                b64.encode(salt),
                b64.encode(mac.finalize().into_bytes())
            )
        };
        assert_eq!(
            verdict(&hashed("[db1.example]:2222"), 2222),
            Verdict::Trusted
        );
        assert_eq!(verdict(&hashed("db1.example"), 2222), Verdict::Unknown);
        assert_eq!(verdict(&hashed("db1.example"), 22), Verdict::Trusted);
        let revoked = format!("{}\n@revoked * ssh-ed25519 {KEY}\n", hashed("db1.example"));
        assert_eq!(verdict(&revoked, 22), Verdict::Revoked { line: 2 });
    }

    #[test]
    fn revoked_wins_wherever_it_is() {
        let trust = format!("db1.example ssh-ed25519 {KEY}");
        let revoke = format!("@revoked unrelated.host ssh-ed25519 {KEY}");
        assert_eq!(
            verdict(&format!("{trust}\n{revoke}\n"), 22),
            Verdict::Revoked { line: 2 }
        );
        assert_eq!(
            verdict(&format!("{revoke}\n{trust}\n"), 22),
            Verdict::Revoked { line: 1 }
        );
        // Revoking another key leaves this one trusted.
        let other = format!("@revoked * ssh-ed25519 {OTHER}");
        assert_eq!(
            verdict(&format!("{other}\n{trust}\n"), 22),
            Verdict::Trusted
        );
    }

    #[test]
    fn certificate_authorities_are_named_not_ignored() {
        let ca = format!("@cert-authority *.example ssh-ed25519 {OTHER}");
        assert_eq!(
            verdict(&format!("# pins\n{ca}\n"), 22),
            Verdict::CertAuthorityOnly { line: 2 }
        );
        let pinned_other = format!("db1.example ssh-ed25519 {OTHER}");
        assert_eq!(
            verdict(&format!("{ca}\n{pinned_other}\n"), 22),
            Verdict::Changed { ca_lines: true }
        );
        let pinned = format!("db1.example ssh-ed25519 {KEY}");
        assert_eq!(verdict(&format!("{ca}\n{pinned}\n"), 22), Verdict::Trusted);
        // A CA for other hosts says nothing about this one.
        let elsewhere = format!("@cert-authority *.other ssh-ed25519 {OTHER}");
        assert_eq!(verdict(&elsewhere, 22), Verdict::Unknown);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let e = check("\n@revoked * ssh-ed25519\n", "h", 22, &blob()).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = check("h ssh-ed25519 !!!\n", "h", 22, &blob()).unwrap_err();
        assert!(e.contains("base64"), "{e}");
        let e = check("@marker h ssh-ed25519 AAAA\n", "h", 22, &blob()).unwrap_err();
        assert!(e.contains("unknown marker"), "{e}");
    }

    #[test]
    fn a_line_whose_key_is_of_another_type_than_it_says_is_an_error() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob());
        let e = check(&format!("h ssh-rsa {b64}\n"), "h", 22, &blob()).unwrap_err();
        assert!(e.contains("line 1") && e.contains("ssh-rsa"), "{e}");
        assert!(check(&format!("h ssh-ed25519 {b64}\n"), "h", 22, &blob()).is_ok());
    }
}
