//! Which backups to keep: a pure function over (name, time) pairs, so every
//! rule is tested on fixed dates. Rules combine like restic's `forget`: a
//! backup is kept if any rule keeps it, and every reason is reported.

use chrono::{DateTime, Datelike, Utc};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub name: String,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub created: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (`last 1/7`, `daily 2026-11-20`), or why not.
    pub reasons: Vec<String>,
}

/// Decides, newest first. Only complete backups belong in `backups`.
pub fn plan(backups: &[Backup], policy: Policy) -> Vec<Decision> {
    let mut sorted: Vec<&Backup> = backups.iter().collect();
    // Newest first; ties broken by name so the result is deterministic.
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|b| Decision {
            name: b.name.clone(),
            created: b.created,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    for (i, d) in decisions.iter_mut().enumerate() {
        if (i as u64) < u64::from(policy.keep_last) {
            d.keep = true;
            d.reasons
                .push(format!("last {}/{}", i + 1, policy.keep_last));
        }
    }
    bucket(&mut decisions, policy.keep_daily, "daily", |t| {
        t.format("%Y-%m-%d").to_string()
    });
    bucket(&mut decisions, policy.keep_weekly, "weekly", |t| {
        let w = t.iso_week();
        format!("{}-W{:02}", w.year(), w.week())
    });
    bucket(&mut decisions, policy.keep_monthly, "monthly", |t| {
        t.format("%Y-%m").to_string()
    });
    for d in &mut decisions {
        if !d.keep {
            d.reasons.push("matches no keep rule".into());
        }
    }
    decisions
}

/// Keeps the newest backup of each of the `n` most recent periods.
fn bucket(
    decisions: &mut [Decision],
    n: u32,
    label: &str,
    period: impl Fn(&DateTime<Utc>) -> String,
) {
    let mut seen: Vec<String> = Vec::new();
    for d in decisions.iter_mut() {
        if seen.len() >= n as usize {
            break;
        }
        let p = period(&d.created);
        if seen.last() != Some(&p) && !seen.contains(&p) {
            d.keep = true;
            d.reasons.push(format!("{label} {p}"));
            seen.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 1, 0).unwrap()
    }

    fn backups(times: &[DateTime<Utc>]) -> Vec<Backup> {
        times
            .iter()
            .map(|t| Backup {
                name: format!("job-{}", t.format("%Y%m%dT%H%M%SZ")),
                created: *t,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.keep)
            .map(|d| d.created.format("%m-%d %H").to_string())
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_not_the_oldest() {
        // The classic `ls | sort | tail -n +7 | xargs rm` bug deletes the newest.
        let b = backups(&(1..=10).map(|d| at(2026, 11, d, 0)).collect::<Vec<_>>());
        let d = plan(
            &b,
            Policy {
                keep_last: 7,
                ..Policy::default()
            },
        );
        assert_eq!(
            kept(&d),
            ["11-10 00", "11-09 00", "11-08 00", "11-07 00", "11-06 00", "11-05 00", "11-04 00"]
        );
        let removed: Vec<_> = d
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(
            removed,
            [
                "job-20261103T000100Z",
                "job-20261102T000100Z",
                "job-20261101T000100Z"
            ]
        );
        assert_eq!(d[0].reasons, ["last 1/7"]);
    }

    #[test]
    fn table_of_policies() {
        // Two backups a day from Oct 1 to Nov 30 2026.
        let mut times = Vec::new();
        for (m, days) in [(10, 31), (11, 30)] {
            for day in 1..=days {
                times.push(at(2026, m, day, 0));
                times.push(at(2026, m, day, 12));
            }
        }
        let b = backups(&times);
        let cases: &[(Policy, &[&str])] = &[
            (
                Policy {
                    keep_last: 3,
                    ..Policy::default()
                },
                &["11-30 12", "11-30 00", "11-29 12"],
            ),
            (
                Policy {
                    keep_daily: 3,
                    ..Policy::default()
                },
                &["11-30 12", "11-29 12", "11-28 12"],
            ),
            (
                Policy {
                    keep_last: 1,
                    keep_daily: 2,
                    ..Policy::default()
                },
                &["11-30 12", "11-29 12"],
            ),
            // ISO weeks: Nov 30 2026 is a Monday (W49); Nov 29 ends W48.
            (
                Policy {
                    keep_weekly: 3,
                    ..Policy::default()
                },
                &["11-30 12", "11-29 12", "11-22 12"],
            ),
            (
                Policy {
                    keep_monthly: 2,
                    ..Policy::default()
                },
                &["11-30 12", "10-31 12"],
            ),
            (
                Policy {
                    keep_monthly: 5,
                    ..Policy::default()
                },
                &["11-30 12", "10-31 12"],
            ),
        ];
        for (policy, want) in cases {
            let got = kept(&plan(&b, *policy));
            assert_eq!(got, *want, "{policy:?}");
        }
    }

    #[test]
    fn nothing_to_decide_and_fewer_than_kept() {
        assert!(plan(
            &[],
            Policy {
                keep_last: 7,
                ..Policy::default()
            }
        )
        .is_empty());
        let b = backups(&[at(2026, 1, 1, 0), at(2026, 1, 2, 0)]);
        assert!(plan(
            &b,
            Policy {
                keep_last: 7,
                ..Policy::default()
            }
        )
        .iter()
        .all(|d| d.keep));
    }

    #[test]
    fn reasons_accumulate() {
        let b = backups(&[at(2026, 1, 1, 0)]);
        let d = plan(
            &b,
            Policy {
                keep_last: 1,
                keep_daily: 1,
                keep_weekly: 1,
                keep_monthly: 1,
            },
        );
        assert_eq!(
            d[0].reasons,
            [
                "last 1/1",
                "daily 2026-01-01",
                "weekly 2026-W01",
                "monthly 2026-01"
            ]
        );
    }
}
