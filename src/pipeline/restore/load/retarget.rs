//! A single-database dump loaded into another database: the lines that
//! name its own database dropped, as a stream; its `CREATE DATABASE` kept
//! as `ALTER DATABASE` of the target, so the target takes the database's
//! own default character set and collation (and with them those of the
//! triggers, routines and events created in it); and a column whose default
//! draws from a sequence of the dump's own database draws from the target's
//! (the server writes `nextval(`db`.`seq`)`, which would tie the copy to the
//! database it was made from).

use std::io::{self, BufRead, Read};

use crate::pipeline::plumbing::sqlclient::{own_definer, quoted_len, DEFINER_STARTS};

/// The lines of a single-database dump that name its database, dropped so
/// that it loads into the database the client was started on.
pub(super) const RETARGETED: [&[u8]; 2] = [b"CREATE DATABASE ", b"USE `"];
/// Bytes of a line that decide whether it is dropped: the longest prefix.
pub(super) const HEAD: usize = 16;
/// The longest `CREATE DATABASE` line rewritten; a longer one is dropped.
const CREATE_MAX: usize = 4096;
/// How a line of a `CREATE TABLE` statement starts (a column or a key).
const COLUMN: &[u8] = b"  `";
/// The longest column line whose sequence default is rewritten; a longer
/// one (a vast ENUM) passes as it is.
const COLUMN_MAX: usize = 64 << 10;
/// How much of a line is read to find its definer: the clause with the
/// longest user and host names servers allow, quoted, fits.
const DEFINER_MAX: usize = 2048;

/// The database a `CREATE DATABASE` line names, as quoted (backticks
/// doubled, without the outer ones).
fn database_name(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"CREATE DATABASE ")?;
    let rest = rest
        .strip_prefix(b"/*!32312 IF NOT EXISTS*/ ")
        .unwrap_or(rest);
    let len = quoted_len(rest)?;
    Some(&rest[1..len - 1])
}

/// A column line of a `CREATE TABLE` with `DEFAULT nextval(`db`.` (the
/// dump's own database `db`, as quoted) made `DEFAULT nextval(`, so that
/// the sequence is looked up in the database the table is created in.
/// Only outside quotes: a string (a default, a comment) that holds those
/// words keeps them.
pub(super) fn unqualify_sequences(line: &[u8], db: &[u8]) -> Vec<u8> {
    let needle = [&b"DEFAULT nextval(`"[..], db, b"`."].concat();
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < line.len() {
        let c = line[i];
        match quote {
            Some(q) => {
                if c == b'\\' && q == b'\'' {
                    // An escaped byte inside a string.
                    out.extend_from_slice(&line[i..(i + 2).min(line.len())]);
                    i += 2;
                    continue;
                }
                if c == q {
                    // A doubled quote stays inside; a single one closes.
                    if line.get(i + 1) == Some(&q) {
                        out.extend_from_slice(&[q, q]);
                        i += 2;
                        continue;
                    }
                    quote = None;
                }
            }
            None if c == b'\'' || c == b'`' || c == b'"' => quote = Some(c),
            None if line[i..].starts_with(&needle) => {
                out.extend_from_slice(b"DEFAULT nextval(");
                i += needle.len();
                continue;
            }
            None => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `CREATE DATABASE [/*!32312 IF NOT EXISTS*/] `db` /*!40100 DEFAULT
/// CHARACTER SET … COLLATE … */;` as `ALTER DATABASE /*!40100 … */;` — of
/// the database the client was started on; `None` (drop the line) when it
/// sets nothing.
pub(super) fn alter_database(line: &[u8]) -> Option<Vec<u8>> {
    let rest = line.strip_prefix(b"CREATE DATABASE ")?;
    let rest = rest
        .strip_prefix(b"/*!32312 IF NOT EXISTS*/ ")
        .unwrap_or(rest);
    let settings = &rest[quoted_len(rest)?..];
    memchr::memmem::find(settings, b"CHARACTER SET")?;
    Some([&b"ALTER DATABASE"[..], settings].concat())
}

/// Drops the `CREATE DATABASE` and `USE` lines of a single-database dump,
/// streaming: only a line's first [`HEAD`] bytes are held, the rest passes
/// through (or is skipped) in the reader's pieces, however long the line
/// (a dump's extended INSERT can be hundreds of megabytes).
pub(super) struct Retarget<R> {
    pub(super) inner: io::BufReader<R>,
    /// The start of the current line, while it is being decided or sent.
    pub(super) head: Vec<u8>,
    pub(super) sent: usize,
    pub(super) line: Line,
    /// The dump's own database, as quoted, once its `CREATE DATABASE` line
    /// has passed.
    database: Option<Vec<u8>>,
    /// Between a `CREATE TABLE` line and the `)` line that ends it.
    in_table: bool,
    /// The dump's `DEFINER=` clauses become `CURRENT_USER` ([`own_definer`]).
    own_definers: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Line {
    /// At the start of a line: its head is read next.
    Start,
    /// Sending the head of a line that is kept.
    Head,
    /// Passing the rest of a kept line through.
    Pass,
    /// Skipping the rest of a dropped line.
    Skip,
}

impl<R: Read> Retarget<R> {
    pub(super) fn new(inner: R) -> Self {
        Retarget {
            inner: io::BufReader::with_capacity(1 << 20, inner),
            head: Vec::with_capacity(HEAD),
            sent: 0,
            line: Line::Start,
            database: None,
            in_table: false,
            own_definers: false,
        }
    }

    /// Makes the objects the dump creates run as the loading account.
    pub(super) fn owning_definers(mut self) -> Self {
        self.own_definers = true;
        self
    }

    /// Reads the head of the next line: [`HEAD`] bytes, or less up to its
    /// newline or the end of the dump.
    pub(super) fn read_head(&mut self) -> io::Result<()> {
        self.head.clear();
        self.sent = 0;
        while self.head.len() < HEAD && self.head.last() != Some(&b'\n') {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let want = (HEAD - self.head.len()).min(buf.len());
            let take = memchr::memchr(b'\n', &buf[..want]).map_or(want, |i| i + 1);
            self.head.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
        }
        Ok(())
    }
}

impl<R: Read> Retarget<R> {
    /// A `CREATE DATABASE` line whose head was read: the whole line (up to
    /// [`CREATE_MAX`]), sent on as [`alter_database`] has it, or dropped.
    fn create_database(&mut self, ended: bool) -> io::Result<Line> {
        let ended = self.read_line(ended, CREATE_MAX)?;
        let alter = if ended {
            if let Some(name) = database_name(&self.head) {
                self.database = Some(name.to_vec());
            }
            alter_database(&self.head)
        } else {
            None
        };
        let too_long = !ended && self.head.len() >= CREATE_MAX;
        // Held no longer than the line's decision.
        self.head = Vec::with_capacity(HEAD);
        self.sent = 0;
        Ok(match alter {
            Some(alter) => {
                self.head = alter;
                Line::Head
            }
            None if too_long => Line::Skip,
            None => Line::Start,
        })
    }

    /// A column line whose head was read: the whole line (up to
    /// [`COLUMN_MAX`]) with its sequence defaults unqualified, then sent;
    /// a longer line is sent as it is.
    fn column(&mut self, ended: bool, db: &[u8]) -> io::Result<Line> {
        // Whole when its newline or the end of the dump was reached.
        if self.read_line(ended, COLUMN_MAX)? || self.head.len() < COLUMN_MAX {
            self.head = unqualify_sequences(&self.head, db);
        }
        Ok(Line::Head)
    }

    /// A line that may hold a definer clause: its start (up to
    /// [`DEFINER_MAX`]) read, the clause made `CURRENT_USER`, then sent.
    fn definer(&mut self, ended: bool) -> io::Result<Line> {
        self.read_line(ended, DEFINER_MAX)?;
        if let Some(owned) = own_definer(&self.head) {
            self.head = owned;
        }
        Ok(Line::Head)
    }

    /// Reads the rest of the current line into `head`, up to `max` bytes
    /// in all: whether its newline was reached.
    fn read_line(&mut self, mut ended: bool, max: usize) -> io::Result<bool> {
        while !ended && self.head.len() < max {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let want = (max - self.head.len()).min(buf.len());
            let (take, end) = through_newline(&buf[..want]);
            self.head.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            ended = end;
        }
        Ok(ended)
    }
}

impl<R: Read> Read for Retarget<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.line {
                Line::Start => {
                    self.read_head()?;
                    if self.head.is_empty() {
                        return Ok(0);
                    }
                    let ended = self.head.last() == Some(&b'\n');
                    if self.head.starts_with(RETARGETED[0]) {
                        self.line = self.create_database(ended)?;
                        continue;
                    }
                    if self.own_definers
                        && (self.head.starts_with(b"/*!50")
                            || self.head.starts_with(DEFINER_STARTS[0]))
                    {
                        self.line = self.definer(ended)?;
                        continue;
                    }
                    if self.head.starts_with(b"CREATE TABLE ") {
                        self.in_table = true;
                    } else if self.head.starts_with(b")") {
                        self.in_table = false;
                    }
                    if self.in_table && self.head.starts_with(COLUMN) {
                        if let Some(db) = self.database.take() {
                            self.line = self.column(ended, &db)?;
                            self.database = Some(db);
                            continue;
                        }
                    }
                    self.line = match (RETARGETED.iter().any(|p| self.head.starts_with(p)), ended) {
                        (true, true) => Line::Start,
                        (true, false) => Line::Skip,
                        (false, _) => Line::Head,
                    };
                }
                Line::Head => {
                    let n = (self.head.len() - self.sent).min(out.len());
                    out[..n].copy_from_slice(&self.head[self.sent..self.sent + n]);
                    self.sent += n;
                    if self.sent == self.head.len() {
                        let ended = self.head.last() == Some(&b'\n');
                        self.line = if ended { Line::Start } else { Line::Pass };
                    }
                    return Ok(n);
                }
                Line::Skip => {
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let (n, ended) = through_newline(buf);
                    self.inner.consume(n);
                    if ended {
                        self.line = Line::Start;
                    }
                }
                Line::Pass => {
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let limit = buf.len().min(out.len());
                    let (n, ended) = through_newline(&buf[..limit]);
                    out[..n].copy_from_slice(&buf[..n]);
                    self.inner.consume(n);
                    if ended {
                        self.line = Line::Start;
                    }
                    return Ok(n);
                }
            }
        }
    }
}

/// How much of `buf` belongs to the current line (its newline included),
/// and whether the line ends there.
pub(super) fn through_newline(buf: &[u8]) -> (usize, bool) {
    match memchr::memchr(b'\n', buf) {
        Some(i) => (i + 1, true),
        None => (buf.len(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The line-based rewrite the streaming one replaced: the reference.
    fn by_lines(dump: &[u8]) -> Vec<u8> {
        let mut db: Option<Vec<u8>> = None;
        let mut in_table = false;
        dump.split_inclusive(|&b| b == b'\n')
            .filter_map(|l| {
                if l.starts_with(b"CREATE TABLE ") {
                    in_table = true;
                } else if l.starts_with(b")") {
                    in_table = false;
                }
                if l.starts_with(RETARGETED[0]) && l.ends_with(b"\n") {
                    if let Some(name) = database_name(l) {
                        db = Some(name.to_vec());
                    }
                    alter_database(l)
                } else if RETARGETED.iter().any(|p| l.starts_with(p)) {
                    None
                } else if let (true, Some(db)) = (in_table && l.starts_with(COLUMN), &db) {
                    Some(unqualify_sequences(l, db))
                } else {
                    Some(l.to_vec())
                }
            })
            .flatten()
            .collect()
    }

    /// Hands out at most `step` bytes per read, as a pipe might.
    struct Trickle<R>(R, usize);

    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Everything `r` yields, read `step` bytes at a time at most.
    fn drain(mut r: impl Read, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            match r.read(&mut buf).unwrap() {
                0 => return out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn a_dump_loses_only_the_lines_that_name_its_database() {
        let dump =
            b"-- MariaDB dump\nCREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`;\n\nUSE `shop`;\n\
                     CREATE TABLE t (x INT);\nINSERT INTO t VALUES (1);\n-- USE `shop`;\nUSE `x`";
        let out = drain(Retarget::new(&dump[..]), 7);
        assert_eq!(
            out,
            b"-- MariaDB dump\n\nCREATE TABLE t (x INT);\nINSERT INTO t VALUES (1);\n-- USE `shop`;\n"
        );
        assert_eq!(out, by_lines(dump));
    }

    /// The database's own character set and collation go to the target.
    #[test]
    fn definers_become_the_loading_account_where_a_dump_writes_them() {
        let dump: &[u8] = b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.x = 1 */;;\n\
/*!50106 CREATE*/ /*!50117 DEFINER=`a``b`@`%`*/ /*!50106 EVENT `ev` ON SCHEDULE EVERY 1 DAY DO SELECT 1 */ ;;\n\
CREATE DEFINER=`root`@`localhost` PROCEDURE `p`()\n\
/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n\
/*!50001 VIEW `v` AS select 'DEFINER=`root`@`localhost`' AS `x` */;\n\
INSERT INTO t VALUES ('CREATE DEFINER=`root`@`localhost`');\n";
        let out = drain(Retarget::new(dump).owning_definers(), 7);
        let want: &[u8] = b"/*!50003 CREATE*/ /*!50017 DEFINER=CURRENT_USER*/ /*!50003 TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.x = 1 */;;\n\
/*!50106 CREATE*/ /*!50117 DEFINER=CURRENT_USER*/ /*!50106 EVENT `ev` ON SCHEDULE EVERY 1 DAY DO SELECT 1 */ ;;\n\
CREATE DEFINER=CURRENT_USER PROCEDURE `p`()\n\
/*!50013 DEFINER=CURRENT_USER SQL SECURITY DEFINER */\n\
/*!50001 VIEW `v` AS select 'DEFINER=`root`@`localhost`' AS `x` */;\n\
INSERT INTO t VALUES ('CREATE DEFINER=`root`@`localhost`');\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        // Without the flag (a signed dump) the definers stay.
        assert_eq!(drain(Retarget::new(dump), 7), dump);
    }

    #[test]
    fn create_database_becomes_alter_database_of_the_target() {
        let dump = b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `sh``op` /*!40100 DEFAULT CHARACTER SET latin1 COLLATE latin1_swedish_ci */;\n\nUSE `sh``op`;\nCREATE TABLE t (x INT);\n";
        for step in [1, 5, 64, 4096] {
            let out = drain(Retarget::new(Trickle(&dump[..], step)), 3);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "ALTER DATABASE /*!40100 DEFAULT CHARACTER SET latin1 COLLATE latin1_swedish_ci */;\n\nCREATE TABLE t (x INT);\n"
            );
        }
    }

    /// A column's default drawn from a sequence of the dump's own database
    /// is drawn from the target's; other databases' sequences, data lines
    /// and lines before the database is known keep their names.
    #[test]
    fn a_sequence_default_of_the_dumps_own_database_follows_the_target() {
        let dump = b"  `a` int DEFAULT nextval(`sh``op`.`s`),\n\
            CREATE DATABASE `sh``op` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\
            CREATE TABLE `t` (\n  `a` bigint(20) DEFAULT nextval(`sh``op`.`s`),\n\
            \x20 `b` bigint(20) DEFAULT nextval(`other`.`s`) COMMENT 'DEFAULT nextval(`sh``op`.`x`)',\n\
            \x20 `c` text DEFAULT 'it''s \\' DEFAULT nextval(`sh``op`.`s`)',\n) ;\n\
            INSERT INTO `t` VALUES ('nextval(`sh``op`.`s`)');\n\
            CREATE PROCEDURE p() BEGIN\n  `x` DEFAULT nextval(`sh``op`.`s`);\nEND;\n";
        for step in [1, 3, 64, 4096] {
            let out = drain(Retarget::new(Trickle(&dump[..], step)), 5);
            assert_eq!(
                String::from_utf8(out.clone()).unwrap(),
                "  `a` int DEFAULT nextval(`sh``op`.`s`),\n\
                 ALTER DATABASE /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\
                 CREATE TABLE `t` (\n  `a` bigint(20) DEFAULT nextval(`s`),\n\
                 \x20 `b` bigint(20) DEFAULT nextval(`other`.`s`) COMMENT 'DEFAULT nextval(`sh``op`.`x`)',\n\
                 \x20 `c` text DEFAULT 'it''s \\' DEFAULT nextval(`sh``op`.`s`)',\n) ;\n\
                 INSERT INTO `t` VALUES ('nextval(`sh``op`.`s`)');\n\
                 CREATE PROCEDURE p() BEGIN\n  `x` DEFAULT nextval(`sh``op`.`s`);\nEND;\n"
            );
            assert_eq!(out, by_lines(dump));
        }
        // A column line longer than the rewrite holds passes as it is.
        let long = [
            &b"CREATE DATABASE `d` /*!40100 DEFAULT CHARACTER SET latin1 */;\nCREATE TABLE `t` (\n  `e` enum("[..],
            &vec![b'x'; COLUMN_MAX],
            b") DEFAULT nextval(`d`.`s`)\nSELECT 1;\n",
        ]
        .concat();
        let out = drain(Retarget::new(&long[..]), 4096);
        let alter = b"ALTER DATABASE /*!40100 DEFAULT CHARACTER SET latin1 */;\n";
        assert_eq!(out[..alter.len()], alter[..]);
        assert!(out.ends_with(b") DEFAULT nextval(`d`.`s`)\nSELECT 1;\n"));
        assert_eq!(
            out[alter.len()..],
            long[long.len() - out.len() + alter.len()..]
        );
    }

    /// Counts the bytes read from it.
    struct Tally<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Tally<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    /// The bytes `r` yields, and how far at most its reading ran ahead of
    /// its output (what it held, or skipped).
    fn stream(mut r: impl Read, read: &std::cell::Cell<u64>) -> (u64, u64) {
        let mut buf = vec![0u8; 64 << 10];
        let (mut out, mut ahead) = (0, 0);
        loop {
            match r.read(&mut buf).unwrap() {
                0 => return (out, ahead),
                n => out += n as u64,
            }
            ahead = ahead.max(read.get() - out);
        }
    }

    #[test]
    fn a_line_far_longer_than_any_buffer_streams_through_in_bounded_memory() {
        const LONG: u64 = 256 << 20;
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let tally = |inner| Tally {
            inner,
            read: std::rc::Rc::clone(&read),
        };
        // A kept line comes out while it is read, never more than the
        // reader's buffer behind.
        let kept: Box<dyn Read> = Box::new(
            b"INSERT INTO t VALUES "
                .chain(io::repeat(b'x').take(LONG))
                .chain(&b";\n"[..]),
        );
        let (out, ahead) = stream(Retarget::new(tally(kept)), &read);
        assert_eq!(out, LONG + 23);
        assert!(ahead <= (1 << 20) + HEAD as u64, "held {ahead} bytes");

        // A dropped one is skipped in the same pieces.
        let dropped: Box<dyn Read> = Box::new(
            b"USE `shop`;\nCREATE DATABASE `shop` /* "
                .chain(io::repeat(b'y').take(LONG))
                .chain(&b" */;\nSELECT 1;\n"[..]),
        );
        let mut r = Retarget::new(dropped);
        assert_eq!(drain(&mut r, 1 << 16), b"SELECT 1;\n");
        assert!(r.head.capacity() <= HEAD, "{}", r.head.capacity());
        assert_eq!(r.inner.capacity(), 1 << 20);
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![
            Just(""),
            Just("CREATE DATABASE "),
            Just("CREATE DATABASE"),
            Just("CREATE DATABASE IF NOT EXISTS "),
            Just("USE `"),
            Just("USE "),
            Just("US"),
            Just(" USE `"),
            Just("CREATE DATABASE `d` "),
            Just("  `c` int DEFAULT nextval(`d`.`s`) "),
            Just("  `c` text DEFAULT 'DEFAULT nextval(`d`.`s`)' "),
            Just("CREATE TABLE `t` ("),
            Just(") ENGINE=InnoDB"),
            Just("  `"),
        ];
        (prefix, "[ -~\t\r]{0,40}").prop_map(|(p, rest)| format!("{p}{rest}").into_bytes())
    }

    proptest! {
        #[test]
        fn streams_exactly_what_the_line_based_rewrite_did(
            lines in proptest::collection::vec(line(), 0..30),
            trailing_newline: bool,
            piece in 1usize..40,
            step in 1usize..40,
        ) {
            let mut dump = lines.join(&b'\n');
            if trailing_newline {
                dump.push(b'\n');
            }
            let out = drain(Retarget::new(Trickle(&dump[..], piece)), step);
            prop_assert_eq!(out, by_lines(&dump));
        }
    }
}
