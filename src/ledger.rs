//! The job's ledger: each sidecar carries a sequence number and the SHA-256
//! of the job's previous sidecar, and the signature covers both. This module
//! is the pure part: what the next entry is, and what a store's entries say
//! about missing, forked, reordered or stale backups. A leaf.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

/// One sidecar, as the ledger sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub seq: u64,
    /// The previous sidecar's SHA-256 (hex), empty for the first.
    pub prev: String,
    /// The SHA-256 (hex) of this sidecar's exact bytes.
    pub digest: String,
    pub created: DateTime<Utc>,
}

/// The SHA-256 (hex) of a sidecar's bytes, as `prev` records it.
pub fn digest(sidecar_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(sidecar_bytes))
}

/// Where the next backup goes: after the highest sequence number seen.
pub fn next<'a>(known: impl IntoIterator<Item = &'a Entry>) -> (u64, String) {
    match known.into_iter().max_by_key(|e| e.seq) {
        Some(e) => (e.seq.saturating_add(1), e.digest.clone()),
        None => (1, String::new()),
    }
}

/// What the checks found: facts that hold, and problems.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub checks: Vec<String>,
    /// Forks, reordering, entries lost or hidden with no copy anywhere,
    /// staleness: the store's history cannot be trusted.
    pub problems: Vec<String>,
    /// Entries this store lacks that another store holds: not damage, but
    /// work for the next refill.
    pub elsewhere: Vec<String>,
}

/// Why an entry is not in a store, as the caller found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absence {
    /// Deleted by coffer's retention (a `prune` record says so).
    Pruned(String),
    /// Not here, but this other store holds it (its name and where).
    Elsewhere(String),
}

/// What the other stores know: why an entry is absent here, and the
/// newest sequence number any store holds.
pub struct Elsewhere<'a> {
    pub explain: &'a dyn Fn(u64) -> Option<Absence>,
    pub newest: Option<u64>,
}

/// How far ahead of the checker's clock a time may be before it is called
/// "in the future" (clocks drift; a backup host's clock may run ahead).
pub fn future_slack() -> Duration {
    Duration::minutes(10)
}

/// Checks one store's ledger entries of one job.
///
/// - two entries with one sequence number, or two with one predecessor:
///   a fork (the server mixes two histories, or replays an entry);
/// - an entry whose predecessor is present but is not the one it names:
///   a fork as well;
/// - times that do not grow with the sequence: reordered;
/// - any of the newest `keep_last` sequence numbers absent: missing (retention
///   always keeps those; older ones may be gone by daily/weekly/monthly rules);
/// - the newest entry older than `max_age`: stale (a server that hides new
///   backups, or a job that stopped running);
/// - an entry dated in the future: refused.
pub fn check(entries: &[Entry], keep_last: u32, max_age: Duration, now: DateTime<Utc>) -> Findings {
    let alone = Elsewhere {
        explain: &|_| None,
        newest: None,
    };
    check_with(entries, keep_last, max_age, now, &alone)
}

/// [`check`], where an absent entry may be explained: deleted by retention
/// (not a problem), or held by another store (a note, not damage). Only an
/// absence nothing explains is the alarm: a store that lost or hides it.
/// Entries another store holds past this store's newest count as absent
/// here, so a store that missed the last nights is told apart from one
/// whose whole job went stale.
pub fn check_with(
    entries: &[Entry],
    keep_last: u32,
    max_age: Duration,
    now: DateTime<Utc>,
    others: &Elsewhere<'_>,
) -> Findings {
    let mut f = Findings::default();
    if entries.is_empty() {
        match others.newest {
            Some(n) => f.elsewhere.push(format!(
                "no entry of this job's ledger is in this store, and other stores hold up to #{n}"
            )),
            None => f.problems.push(
                "no signed ledger entry: nothing proves this store holds the job's backups".into(),
            ),
        }
        return f;
    }
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.name.cmp(&b.name)));
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.seq == b.seq {
            f.problems.push(format!(
                "forked: {} and {} both claim sequence number {}",
                a.name, b.name, a.seq
            ));
        } else if b.seq == a.seq + 1 && b.prev != a.digest {
            f.problems.push(format!(
                "forked: {} (#{}) does not follow {} (#{})",
                b.name, b.seq, a.name, a.seq
            ));
        }
        if b.seq > a.seq && b.created <= a.created {
            f.problems.push(format!(
                "reordered: {} (#{}) is dated no later than {} (#{})",
                b.name, b.seq, a.name, a.seq
            ));
        }
    }
    let mut by_prev: Vec<&Entry> = sorted
        .iter()
        .copied()
        .filter(|e| !e.prev.is_empty())
        .collect();
    by_prev.sort_by(|a, b| a.prev.cmp(&b.prev));
    for pair in by_prev.windows(2) {
        if pair[0].prev == pair[1].prev && pair[0].seq != pair[1].seq {
            f.problems.push(format!(
                "forked: {} and {} follow the same predecessor",
                pair[0].name, pair[1].name
            ));
        }
    }
    let newest = sorted[sorted.len() - 1];
    let top = others.newest.map_or(newest.seq, |n| n.max(newest.seq));
    window(&sorted, keep_last, top, others, &mut f);
    for e in &sorted {
        if e.created > now + future_slack() {
            f.problems.push(format!(
                "{} is dated {}, in the future",
                e.name,
                e.created.to_rfc3339()
            ));
        }
    }
    let age = now - newest.created;
    if age > max_age && top > newest.seq {
        // Newer entries are elsewhere: said above, not a stale job.
    } else if age > max_age {
        f.problems.push(format!(
            "stale: the newest backup {} is {} hours old (max_age is {} hours)",
            newest.name,
            age.num_hours(),
            max_age.num_hours()
        ));
    } else if age >= -future_slack() {
        f.checks.push(format!(
            "the newest backup is {} minutes old",
            age.num_minutes().max(0)
        ));
    }
    f
}

/// The newest `keep_last` sequence numbers up to `top`: each present,
/// removed by retention as recorded, held by another store, or lost.
fn window(sorted: &[&Entry], keep_last: u32, top: u64, others: &Elsewhere<'_>, f: &mut Findings) {
    let newest = sorted[sorted.len() - 1];
    let window_start = top.saturating_sub(u64::from(keep_last.max(1)) - 1).max(1);
    let mut lost = Vec::new();
    let mut pruned = Vec::new();
    for s in (window_start..=top).filter(|s| !sorted.iter().any(|e| e.seq == *s)) {
        match (others.explain)(s) {
            Some(Absence::Pruned(why)) => pruned.push(format!("#{s} ({why})")),
            Some(Absence::Elsewhere(at)) => f
                .elsewhere
                .push(format!("#{s} is not in this store; a good copy is {at}")),
            None => lost.push(format!("#{s}")),
        }
    }
    if !pruned.is_empty() {
        f.checks.push(format!(
            "removed by retention, as recorded: {}",
            pruned.join(", ")
        ));
    }
    if lost.is_empty() {
        f.checks.push(format!(
            "ledger: #{window_start} to #{top} accounted for, the newest here is {}",
            newest.name
        ));
    } else {
        f.problems.push(format!(
            "missing: ledger entries {} are not in this store nor in any other, and no prune record says they were removed (lost or hidden by the store; the copies present are not affected)",
            lost.join(", "),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::hours(h)
    }

    /// A chain of `n` entries, one a day.
    fn chain(n: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map(|e| e.digest.clone()).unwrap_or_default();
            out.push(Entry {
                name: format!("j-{seq}"),
                seq,
                prev,
                digest: digest(format!("entry {seq}").as_bytes()),
                created: t(i64::try_from(seq).unwrap() * 24),
            });
        }
        out
    }

    fn run(entries: &[Entry], now: DateTime<Utc>) -> Findings {
        check(entries, 3, Duration::hours(26), now)
    }

    #[test]
    fn a_whole_chain_passes_and_next_follows_it() {
        let c = chain(5);
        let f = run(&c, t(5 * 24 + 1));
        assert!(f.problems.is_empty(), "{f:?}");
        assert_eq!(next(&c), (6, c[4].digest.clone()));
        assert_eq!(next(&[]), (1, String::new()));
    }

    #[test]
    fn older_entries_may_be_pruned() {
        let c = chain(6);
        // keep_last = 3: #4..#6 must be there; #1 kept by a monthly rule.
        let kept = [c[0].clone(), c[3].clone(), c[4].clone(), c[5].clone()];
        assert!(run(&kept, t(6 * 24)).problems.is_empty());
    }

    #[test]
    fn a_hidden_entry_is_missing() {
        let c = chain(5);
        let hidden = [c[0].clone(), c[1].clone(), c[2].clone(), c[4].clone()];
        let f = run(&hidden, t(5 * 24));
        assert_eq!(f.problems.len(), 1, "{f:?}");
        assert!(
            f.problems[0].contains("missing: ledger entries #4"),
            "{f:?}"
        );
    }

    #[test]
    fn rollback_is_stale() {
        let c = chain(5);
        // The server hides the two newest: what is left is whole but old.
        let f = run(&c[..3], t(5 * 24 + 1));
        assert!(f.problems.iter().any(|p| p.starts_with("stale:")), "{f:?}");
    }

    #[test]
    fn forks_and_replays_are_found() {
        let mut c = chain(4);
        let mut other = c[3].clone();
        other.name = "j-other".into();
        other.digest = digest(b"other");
        c.push(other);
        let f = run(&c, t(4 * 24));
        assert!(
            f.problems
                .iter()
                .any(|p| p.contains("both claim sequence number 4")),
            "{f:?}"
        );
        // A replay under a later number: same predecessor, other number.
        let mut c = chain(4);
        let mut replay = c[3].clone();
        replay.name = "j-replay".into();
        replay.seq = 5;
        replay.digest = digest(b"replay");
        replay.created = t(5 * 24);
        c.push(replay);
        let f = run(&c, t(5 * 24));
        assert!(
            f.problems
                .iter()
                .any(|p| p.contains("follow the same predecessor")),
            "{f:?}"
        );

        let mut c = chain(4);
        c[3].prev = digest(b"not the third");
        let f = run(&c, t(4 * 24));
        assert!(
            f.problems.iter().any(|p| p.contains("does not follow")),
            "{f:?}"
        );
    }

    #[test]
    fn reordered_and_future_entries_are_found() {
        let mut c = chain(4);
        c[3].created = t(24);
        assert!(run(&c, t(4 * 24))
            .problems
            .iter()
            .any(|p| p.starts_with("reordered")));
        let mut c = chain(4);
        c[3].created = t(1000);
        assert!(run(&c, t(4 * 24))
            .problems
            .iter()
            .any(|p| p.contains("in the future")));
    }

    #[test]
    fn an_empty_ledger_fails() {
        assert!(!run(&[], t(0)).problems.is_empty());
    }
}
