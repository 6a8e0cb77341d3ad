//! Views, routines, triggers and events in a MariaDB/MySQL dump name their
//! definer (`DEFINER=\`root\`@\`localhost\``), an account the production
//! server has and a scratch server must not: it has no root to hand a
//! forged dump. The drill loads them as the loading account's own
//! (`DEFINER=CURRENT_USER`), as a streaming rewrite of each statement's
//! first bytes: data lines pass untouched, and memory stays bounded however
//! long a line is.

use std::io::{self, Write};

use crate::pipeline::plumbing::sqlclient::own_definer;

/// How much of a line is held to look for a definer: the clause comes
/// within the first few hundred bytes of the statements that carry one.
const HEAD: usize = 1024;

#[derive(Default)]
pub(crate) struct DefinerFilter {
    /// The start of the current line, while it is being decided.
    head: Vec<u8>,
    /// The current line is decided: the rest of it passes as it comes.
    passing: bool,
}

impl DefinerFilter {
    /// Writes `data` to `out`, rewritten.
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut dyn Write) -> io::Result<()> {
        while !data.is_empty() {
            if self.passing {
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        out.write_all(&data[..=i])?;
                        data = &data[i + 1..];
                        self.passing = false;
                    }
                    None => return out.write_all(data),
                }
                continue;
            }
            let room = HEAD - self.head.len();
            let take = match memchr::memchr(b'\n', &data[..data.len().min(room)]) {
                Some(i) => i + 1,
                None => data.len().min(room),
            };
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            let ended = self.head.last() == Some(&b'\n');
            if ended || self.head.len() == HEAD {
                out.write_all(&rewritten(&self.head))?;
                self.head.clear();
                self.passing = !ended;
            }
        }
        Ok(())
    }

    /// Writes what is held (a last line without a newline).
    pub(crate) fn end(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let head = std::mem::take(&mut self.head);
        self.passing = false;
        out.write_all(&rewritten(&head))
    }
}

/// A statement line's head with its definer made the loader
/// ([`own_definer`]); any other line as it is.
fn rewritten(head: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    own_definer(head).map_or(head.into(), std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dump: &[u8], piece: usize) -> Vec<u8> {
        let mut f = DefinerFilter::default();
        let mut out = Vec::new();
        for chunk in dump.chunks(piece) {
            f.feed(chunk, &mut out).unwrap();
        }
        f.end(&mut out).unwrap();
        out
    }

    #[test]
    fn definers_become_the_loader_and_data_passes_untouched() {
        let long = "x".repeat(5000);
        let dump = format!(
            "/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n\
             CREATE DEFINER=`a``b`@`%` PROCEDURE `p`()\n\
             /*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 trigger tr after insert on t for each row insert into log values (new.id) */;;\n\
             INSERT INTO `t` VALUES ('DEFINER=`root`@`localhost`','{long}');\n\
             ('{long}'),\n\
             /*!50001 VIEW `v` AS select 1 */"
        );
        let want = dump
            .replace(
                "/*!50013 DEFINER=`root`@`localhost` SQL",
                "/*!50013 DEFINER=CURRENT_USER SQL",
            )
            .replace("CREATE DEFINER=`a``b`@`%`", "CREATE DEFINER=CURRENT_USER")
            .replace(
                "/*!50017 DEFINER=`root`@`localhost`*/",
                "/*!50017 DEFINER=CURRENT_USER*/",
            );
        for piece in [1, 3, 17, 1024, 1 << 16] {
            assert_eq!(
                String::from_utf8(run(dump.as_bytes(), piece)).unwrap(),
                want,
                "pieces of {piece}"
            );
        }
    }
}
