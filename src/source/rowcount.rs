//! Exact row counts from a `mysqldump`/`mariadb-dump` stream, counted as the
//! dump passes: each tuple of each `INSERT INTO` statement is a row. The
//! counts describe exactly the dump's own snapshot, which a separate
//! `COUNT(*)` on a live server could not.

use std::collections::BTreeMap;
use std::io::{self, Read};

#[derive(Default)]
enum State {
    #[default]
    LineStart,
    /// Collecting the start of a line to see what statement it is.
    Head(Vec<u8>),
    /// Inside an INSERT's column list (`INSERT INTO \`t\` (\`a\`, …)
    /// VALUES`, as dumps of tables with invisible columns have it): skipped
    /// to its closing parenthesis, then the head goes on.
    Columns { head: Vec<u8>, in_name: bool },
    /// Inside an INSERT's VALUES: count tuples at depth 0, skip strings.
    Values {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// Any other line: skip to its end.
    Skip,
}

#[derive(Default)]
pub struct RowCounter {
    state: State,
    /// Between `DELIMITER ;;` and `DELIMITER ;`: trigger, routine and event
    /// bodies, whose INSERT statements are no rows of the dump.
    in_body: bool,
    database: String,
    table: String,
    /// `database.table` → rows.
    pub counts: BTreeMap<String, u64>,
}

/// A backquoted identifier at the start of `s`, unquoted (a backtick in a
/// name is written doubled), and what follows it.
fn backquoted_rest(s: &[u8]) -> Option<(String, &[u8])> {
    let mut s = s.strip_prefix(b"`")?;
    let mut name = Vec::new();
    loop {
        let end = s.iter().position(|&b| b == b'`')?;
        name.extend_from_slice(&s[..end]);
        if s.get(end + 1) == Some(&b'`') {
            name.push(b'`');
            s = &s[end + 2..];
        } else {
            return Some((String::from_utf8_lossy(&name).into_owned(), &s[end + 1..]));
        }
    }
}

fn backquoted(s: &[u8]) -> Option<String> {
    backquoted_rest(s).map(|(name, _)| name)
}

impl RowCounter {
    fn key(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// `USE` and `CREATE TABLE` lines set the current database and table.
    fn head_done(&mut self, head: &[u8]) {
        if let Some(d) = head.strip_prefix(b"DELIMITER ") {
            self.in_body = d.trim_ascii() != b";";
        } else if self.in_body {
        } else if let Some(db) = head.strip_prefix(b"USE ").and_then(backquoted) {
            self.database = db;
        } else if let Some(t) = head.strip_prefix(b"CREATE TABLE ").and_then(backquoted) {
            self.table = t;
            let k = self.key();
            self.counts.entry(k).or_insert(0);
        }
    }

    /// `INSERT INTO \`t\` VALUES` — the tuples follow on this line (MySQL)
    /// or on the next ones (MariaDB).
    fn insert_head(&mut self, head: &[u8]) -> bool {
        if self.in_body {
            return false;
        }
        let Some(t) = head.strip_prefix(b"INSERT INTO ").and_then(backquoted) else {
            return false;
        };
        if !head.trim_ascii_end().ends_with(b"VALUES") {
            return false;
        }
        self.table = t;
        true
    }

    fn count_row(&mut self) {
        *self.counts.entry(self.key()).or_insert(0) += 1;
    }

    /// Most of a dump is the inside of `VALUES`: that state runs in a tight
    /// loop of its own (it was a fifth of a live backup's CPU time when it
    /// went through the general per-byte state machine).
    fn scan_values(&mut self, data: &[u8], depth: u32, in_string: bool, escaped: bool) -> usize {
        let (mut depth, mut in_string, mut escaped) = (depth, in_string, escaped);
        let mut rows = 0u64;
        let mut ended = false;
        let mut i = 0;
        while i < data.len() {
            if in_string {
                // Most of a dump's bytes are inside strings: jump to the
                // next quote or backslash (memchr reads many bytes at once).
                if escaped {
                    escaped = false;
                    i += 1;
                } else if let Some(p) = memchr::memchr2(b'\\', b'\'', &data[i..]) {
                    i += p + 1;
                    if data[i - 1] == b'\\' {
                        escaped = true;
                    } else {
                        in_string = false;
                    }
                } else {
                    i = data.len();
                }
                continue;
            }
            let b = data[i];
            i += 1;
            match b {
                b'\'' => in_string = true,
                b'(' => {
                    if depth == 0 {
                        rows += 1;
                    }
                    depth += 1;
                }
                b')' => depth = depth.saturating_sub(1),
                b';' if depth == 0 => {
                    ended = true;
                    break;
                }
                _ => {}
            }
        }
        if rows > 0 {
            *self.counts.entry(self.key()).or_insert(0) += rows;
        }
        self.state = if ended {
            State::Skip
        } else {
            State::Values {
                depth,
                in_string,
                escaped,
            }
        };
        i
    }

    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Values {
                    depth,
                    in_string,
                    escaped,
                } => {
                    i += self.scan_values(&data[i..], depth, in_string, escaped);
                    continue;
                }
                State::Skip => {
                    // Comments and other statements: straight to the line's end.
                    match data[i..].iter().position(|&b| b == b'\n') {
                        Some(n) => {
                            i += n + 1;
                            self.state = State::LineStart;
                        }
                        None => i = data.len(),
                    }
                    continue;
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            let state = std::mem::take(&mut self.state);
            self.state = match state {
                State::LineStart | State::Skip if b == b'\n' => State::LineStart,
                State::LineStart => State::Head(vec![b]),
                State::Head(h) if b == b'\n' => {
                    if self.insert_head(&h) {
                        State::Values {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        }
                    } else {
                        self.head_done(&h);
                        State::LineStart
                    }
                }
                State::Head(h) if b == b'(' && self.insert_head(&h) => {
                    self.count_row();
                    State::Values {
                        depth: 1,
                        in_string: false,
                        escaped: false,
                    }
                }
                State::Head(h) if b == b'(' && !self.in_body && column_list_starts(&h) => {
                    State::Columns {
                        head: h,
                        in_name: false,
                    }
                }
                State::Columns { head, in_name } => match b {
                    b'`' => State::Columns {
                        head,
                        in_name: !in_name,
                    },
                    b')' if !in_name => State::Head(head),
                    _ => State::Columns { head, in_name },
                },
                State::Head(mut h) => {
                    h.push(b);
                    if h.len() >= 300 {
                        self.head_done(&h);
                        State::Skip
                    } else {
                        State::Head(h)
                    }
                }
                // Handled above, before a byte is taken.
                s @ State::Values { .. } => s,
                State::Skip => State::Skip,
            };
        }
    }
}

/// `INSERT INTO \`t\` `: a column list follows, not the tuples.
fn column_list_starts(head: &[u8]) -> bool {
    head.strip_prefix(b"INSERT INTO ")
        .and_then(backquoted_rest)
        .is_some_and(|(_, rest)| rest.trim_ascii().is_empty())
}

/// Counts rows in what passes through.
pub struct Counting<R> {
    pub inner: R,
    pub counter: RowCounter,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.feed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tuples_not_parentheses_in_strings() {
        // MySQL style: tuples on the INSERT line; MariaDB style: one per line.
        let dump = b"-- MariaDB dump\nUSE `shop`;\nCREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n);\nCREATE TABLE `empty` (`x` int);\nINSERT INTO `t` VALUES (1,'a (b) c'),(2,'it\\'s (x'),(3,0x28FF);\nINSERT INTO `t` VALUES (4,'\\\\'),(5,NULL);\nINSERT INTO `t` VALUES\n(6,'x;y'),\n(7,'z');\n-- Dump completed\n";
        let mut c = RowCounter::default();
        // Fed in awkward pieces, as a pipe would.
        for piece in dump.chunks(7) {
            c.feed(piece);
        }
        assert_eq!(c.counts.get("shop.t"), Some(&7));
        assert_eq!(c.counts.get("shop.empty"), Some(&0));
    }

    /// What a real MariaDB 10.11 dump holds: a table whose name has a
    /// backtick, a table with an invisible column (its INSERT lists the
    /// columns, past any head length), and trigger and routine bodies whose
    /// INSERT lines are no rows of the dump.
    #[test]
    fn counts_only_top_level_inserts_of_any_table_name_and_column_list() {
        let cols: String = (1..=40).fold(String::new(), |mut c, i| {
            c.push_str(", `column_with_a_long_name_");
            c.push_str(&i.to_string());
            c.push('`');
            c
        });
        let dump = format!(
            "USE `rc`;\nCREATE TABLE `inv` (\n  `id` int(11)\n);\n\
             INSERT INTO `inv` (`id`, `secret`{cols}, `last`) VALUES (1,2,3),\n(4,5,6),\n(7,8,9);\n\
             CREATE TABLE `log` (\n  `x` int(11)\n);\nINSERT INTO `log` VALUES\n(1),\n(2),\n(3);\n\
             DELIMITER ;;\n/*!50003 CREATE*/ /*!50003 trigger tr after insert on t for each row insert into log values (new.id) \n*/;;\nDELIMITER ;\n\
             CREATE TABLE `we``ird` (\n  `id` int(11)\n);\nINSERT INTO `we``ird` VALUES\n(1),\n(2);\n\
             DELIMITER ;;\nCREATE DEFINER=`root`@`localhost` PROCEDURE `p`()\nbegin\ninsert into log values (99);\nINSERT INTO `log` VALUES (100);\nend\n;;\nDELIMITER ;\n-- Dump completed\n"
        );
        for piece in [1, 7, 4096] {
            let mut c = RowCounter::default();
            for chunk in dump.as_bytes().chunks(piece) {
                c.feed(chunk);
            }
            assert_eq!(c.counts.get("rc.inv"), Some(&3), "{:?}", c.counts);
            assert_eq!(c.counts.get("rc.log"), Some(&3), "{:?}", c.counts);
            assert_eq!(c.counts.get("rc.we`ird"), Some(&2), "{:?}", c.counts);
            assert_eq!(c.counts.len(), 3, "{:?}", c.counts);
        }
    }

    proptest::proptest! {
        /// However a pipe cuts the dump, including between a backslash and
        /// the quote it escapes, the counts are those of the dump read whole.
        #[test]
        fn counts_do_not_depend_on_where_reads_end(
            rows in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(
                    vec!["a", "(", ")", "\\'", "\\\\", ";", ",", "0x28", "x y"]), 0..6),
                0..20),
            cuts in proptest::collection::vec(1usize..9, 1..30),
        ) {
            let mut dump = b"USE `d`;\nCREATE TABLE `t` (`x` text);\nINSERT INTO `t` VALUES ".to_vec();
            for (k, parts) in rows.iter().enumerate() {
                if k > 0 {
                    dump.push(b',');
                }
                dump.extend_from_slice(format!("({k},'{}')", parts.concat()).as_bytes());
            }
            dump.extend_from_slice(b";\nINSERT INTO `t` VALUES (1,'z');\n");
            let mut whole = RowCounter::default();
            whole.feed(&dump);
            proptest::prop_assert_eq!(whole.counts.get("d.t"), Some(&(rows.len() as u64 + 1)));
            let mut cut = RowCounter::default();
            let (mut at, mut k) = (0, 0);
            while at < dump.len() {
                let n = cuts[k % cuts.len()].min(dump.len() - at);
                cut.feed(&dump[at..at + n]);
                at += n;
                k += 1;
            }
            proptest::prop_assert_eq!(whole.counts, cut.counts);
        }
    }
}
