//! What a PostgreSQL dump says before its data: who owns its objects, and
//! the database's own comment and settings (`COMMENT ON DATABASE`,
//! `ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`), which
//! pg_restore writes only when it creates the database under its original
//! name (`--create`). A restore into another name applies them itself.
//!
//! The custom format keeps every definition in its table of contents, at
//! the start of the archive, so `pg_restore --schema-only` over the first
//! bytes of the member prints them without reading the data.

use std::collections::BTreeSet;

/// How much of the member is read ahead for its table of contents; a
/// schema whose contents run longer keeps the old behaviour (no owners,
/// no database settings) and says so.
pub(super) const PREFIX_MAX: u64 = 16 << 20;

/// What the start of a dump says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Prelude {
    /// The roles that own the dump's objects (the database's own owner
    /// aside: the restore makes the target).
    pub owners: BTreeSet<String>,
    /// The database's comment and settings, renamed to the target.
    pub statements: Vec<String>,
    /// Database-level statements that could not be renamed, for a warning.
    pub skipped: Vec<String>,
}

/// Reads pg_restore's SQL for the dump's schema (`--create
/// --schema-only -f -`), renaming what applies to database `from` to
/// `target` (a plain identifier, checked by the caller).
///
/// The text is lexed as SQL (quoted strings and identifiers, comments), so
/// that a comment or setting whose text holds `;`, a newline, `-- Name:`
/// or `\connect` cannot split a statement or pose as an entry; and each
/// statement taken must have one of the exact shapes pg_dump writes for a
/// database's own properties, and is written anew from its tokens. Nothing
/// else a dump holds is ever run from here.
pub(super) fn parse(sql: &str, from: &str, target: &str) -> Prelude {
    let mut p = Prelude::default();
    let mut database_level = false;
    let mut pending: Vec<Token> = Vec::new();
    let mut text = String::new();
    for event in lex(sql) {
        match event {
            Event::Header(header) => {
                pending.clear();
                text.clear();
                let kind = field(&header, "; Type: ");
                database_level = kind == Some("DATABASE PROPERTIES")
                    || (matches!(kind, Some("COMMENT" | "ACL")) && header.starts_with("DATABASE "));
                // The database's own entries are its owner's, whom the
                // restore replaces by making the target.
                if let Some(owner) = header.rsplit_once("; Owner: ").map(|(_, o)| o) {
                    if kind != Some("DATABASE")
                        && !database_level
                        && !owner.is_empty()
                        && owner != "-"
                    {
                        p.owners.insert(owner.to_owned());
                    }
                }
            }
            // `\connect` ends the database's entries; session settings for
            // the next connection follow.
            Event::Meta => database_level = false,
            Event::Token(t, raw) if database_level => {
                pending.push(t);
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&raw);
            }
            Event::End if database_level => {
                let tokens = std::mem::take(&mut pending);
                let shown = std::mem::take(&mut text);
                match rename(&tokens, from, target) {
                    Some(s) => p.statements.push(s),
                    None if !tokens.is_empty() => p.skipped.push(format!("{shown};")),
                    None => {}
                }
            }
            Event::Token(..) | Event::End => {}
        }
    }
    p
}

/// The text of `key` in a header, up to the next `; `.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = &header[header.find(key)? + key.len()..];
    Some(rest.split("; ").next().unwrap_or(rest))
}

/// A token of pg_restore's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word, as written (keywords and bare identifiers).
    Word(String),
    /// A double-quoted identifier, unquoted.
    Quoted(String),
    /// A standard string literal (`'…'`, quotes doubled), unquoted.
    Str(String),
    Number(String),
    Punct(char),
    /// Anything else (an `E''` or dollar-quoted string, an operator): no
    /// statement taken here holds one.
    Other,
}

/// What the lexer finds, in order.
enum Event {
    /// A `-- Name: …` line at the start of a line, outside any statement's
    /// quotes: the text after `-- Name: `.
    Header(String),
    /// A psql meta-command line (`\connect`, `\restrict`).
    Meta,
    /// A token, and its text for messages.
    Token(Token, String),
    /// A `;` outside quotes.
    End,
}

/// Lexes `sql` as PostgreSQL does with `standard_conforming_strings` on
/// (as pg_restore writes it): `'…'` with `''`, `"…"` with `""`, `--` and
/// `/* */` comments; a string still open at the end is dropped.
fn lex(sql: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let b = sql.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        let at_start = std::mem::replace(&mut line_start, false);
        if c.is_ascii_whitespace() {
            line_start = at_start;
            i += 1;
            continue;
        }
        let rest = &sql[i..];
        if rest.starts_with("--") {
            let end = rest.find('\n').map_or(b.len(), |n| i + n);
            if let Some(h) = rest[..end - i]
                .strip_prefix("-- Name: ")
                .filter(|_| at_start)
            {
                out.push(Event::Header(h.to_owned()));
            }
            i = end;
            continue;
        }
        if c == b'\\' && at_start {
            out.push(Event::Meta);
            i = rest.find('\n').map_or(b.len(), |n| i + n);
            continue;
        }
        if let Some(body) = rest.strip_prefix("/*") {
            // Not nested in what pg_dump writes; an unclosed one ends all.
            i = body.find("*/").map_or(b.len(), |n| i + 2 + n + 2);
            continue;
        }
        let (token, len) = match c {
            b'\'' | b'"' => match quoted(&rest[1..], c as char) {
                Some((value, n)) if c == b'\'' => (Token::Str(value), n + 1),
                Some((value, n)) => (Token::Quoted(value), n + 1),
                None => return out,
            },
            b';' => {
                out.push(Event::End);
                i += 1;
                continue;
            }
            b',' | b'(' | b')' | b'-' | b'.' | b'=' => (Token::Punct(c as char), 1),
            b'0'..=b'9' => {
                let n = rest
                    .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
                    .unwrap_or(rest.len());
                (Token::Number(rest[..n].to_owned()), n)
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let n = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'))
                    .unwrap_or(rest.len());
                // `E'…'`, `U&'…'`, `B'…'`: not a word and a string.
                if rest[n..].starts_with('\'') || rest[n..].starts_with('&') {
                    (Token::Other, n)
                } else {
                    (Token::Word(rest[..n].to_owned()), n)
                }
            }
            _ => (Token::Other, rest.chars().next().map_or(1, char::len_utf8)),
        };
        out.push(Event::Token(token, rest[..len].to_owned()));
        i += len;
    }
    out
}

/// The value of a quoted string or identifier whose opening quote was
/// just passed, and how many bytes it took (closing quote included).
fn quoted(rest: &str, quote: char) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((at, ch)) = chars.next() {
        if ch == quote {
            if chars.peek().map(|&(_, c)| c) == Some(quote) {
                chars.next();
                value.push(quote);
                continue;
            }
            return Some((value, at + 1));
        }
        value.push(ch);
    }
    None
}

/// An identifier as PostgreSQL folds it: a bare word in lower case.
fn ident(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

fn word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.eq_ignore_ascii_case(w))
}

/// A standard string literal written anew.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An identifier written anew, always quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A setting's value list (`'8MB'`, `'a', 'b'`, `0`, `-1`, `on`), written
/// anew; `None` for anything else.
fn values(tokens: &[Token]) -> Option<String> {
    let mut out = String::new();
    let mut expect_value = true;
    let mut negative = false;
    for t in tokens {
        match (expect_value, t) {
            (true, Token::Punct('-')) if !negative => {
                negative = true;
                continue;
            }
            (true, Token::Str(v)) if !negative => out.push_str(&literal(v)),
            (true, Token::Number(n)) => {
                out.push_str(if negative { "-" } else { "" });
                out.push_str(n);
            }
            (true, t) if !negative => out.push_str(&quote_ident(&ident(t)?)),
            (false, Token::Punct(',')) => out.push_str(", "),
            _ => return None,
        }
        negative = false;
        expect_value = !expect_value;
    }
    (!expect_value).then_some(out)
}

/// The statement, with database `from` made `target`, if it is one of the
/// shapes pg_dump writes for a database's own properties:
/// `COMMENT ON DATABASE d IS '…'`, `ALTER DATABASE d SET s TO v, …`,
/// `ALTER ROLE r IN DATABASE d SET s TO v, …`, and
/// `GRANT|REVOKE p, … ON DATABASE d TO|FROM r [WITH GRANT OPTION]`.
fn rename(t: &[Token], from: &str, target: &str) -> Option<String> {
    let to = quote_ident(target);
    let is_from = |t: &Token| ident(t).as_deref() == Some(from);
    match t {
        [comment, on, database, name, is, Token::Str(text)]
            if word(comment, "COMMENT")
                && word(on, "ON")
                && word(database, "DATABASE")
                && is_from(name)
                && word(is, "IS") =>
        {
            Some(format!("COMMENT ON DATABASE {to} IS {};", literal(text)))
        }
        [alter, database, name, set, rest @ ..]
            if word(alter, "ALTER")
                && word(database, "DATABASE")
                && is_from(name)
                && word(set, "SET") =>
        {
            Some(format!("ALTER DATABASE {to} {};", setting(rest)?))
        }
        [alter, role_kw, role, in_kw, database, name, set, rest @ ..]
            if word(alter, "ALTER")
                && word(role_kw, "ROLE")
                && word(in_kw, "IN")
                && word(database, "DATABASE")
                && is_from(name)
                && word(set, "SET") =>
        {
            Some(format!(
                "ALTER ROLE {} IN DATABASE {to} {};",
                quote_ident(&ident(role)?),
                setting(rest)?
            ))
        }
        [verb, rest @ ..] if word(verb, "GRANT") || word(verb, "REVOKE") => {
            grant(word(verb, "GRANT"), rest, &is_from, &to)
        }
        _ => None,
    }
}

/// `SET name[.name] TO values`: the name's parts written anew.
fn setting(rest: &[Token]) -> Option<String> {
    let to_at = rest.iter().position(|x| word(x, "TO"))?;
    let mut name = Vec::new();
    for (n, x) in rest[..to_at].iter().enumerate() {
        match x {
            Token::Punct('.') if n % 2 == 1 => {}
            x if n % 2 == 0 => name.push(quote_ident(&ident(x)?)),
            _ => return None,
        }
    }
    if name.is_empty() || to_at % 2 == 0 {
        return None;
    }
    Some(format!(
        "SET {} TO {}",
        name.join("."),
        values(&rest[to_at + 1..])?
    ))
}

/// `GRANT p, … ON DATABASE d TO r [WITH GRANT OPTION]` or `REVOKE p, … ON
/// DATABASE d FROM r` (after its verb), written anew for database `to`.
fn grant(
    granting: bool,
    rest: &[Token],
    is_from: &dyn Fn(&Token) -> bool,
    to: &str,
) -> Option<String> {
    let on = rest.iter().position(|x| word(x, "ON"))?;
    let mut privileges = Vec::new();
    for (n, x) in rest[..on].iter().enumerate() {
        match x {
            Token::Word(w) if n % 2 == 0 && w.chars().all(|ch| ch.is_ascii_alphabetic()) => {
                privileges.push(w.to_ascii_uppercase());
            }
            Token::Punct(',') if n % 2 == 1 => {}
            _ => return None,
        }
    }
    let (direction, who, grant_option) = match &rest[on + 1..] {
        [database, name, direction, who] if word(database, "DATABASE") && is_from(name) => {
            (direction, who, false)
        }
        [database, name, direction, who, with, grant_kw, option]
            if word(database, "DATABASE")
                && is_from(name)
                && word(with, "WITH")
                && word(grant_kw, "GRANT")
                && word(option, "OPTION")
                && granting =>
        {
            (direction, who, true)
        }
        _ => return None,
    };
    let expected = if granting { "TO" } else { "FROM" };
    if !word(direction, expected) || privileges.is_empty() {
        return None;
    }
    let grantee = if word(who, "PUBLIC") {
        "PUBLIC".to_owned()
    } else {
        quote_ident(&ident(who)?)
    };
    Some(format!(
        "{} {} ON DATABASE {to} {expected} {grantee}{};",
        if granting { "GRANT" } else { "REVOKE" },
        privileges.join(", "),
        if grant_option {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "--
-- Name: shop; Type: DATABASE; Schema: -; Owner: postgres
--

CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8';


ALTER DATABASE shop OWNER TO postgres;

\\unrestrict abc
\\connect shop
--
-- Name: DATABASE shop; Type: COMMENT; Schema: -; Owner: postgres
--

COMMENT ON DATABASE shop IS 'two
lines; with semicolons';


--
-- Name: shop; Type: DATABASE PROPERTIES; Schema: -; Owner: postgres
--

ALTER DATABASE shop SET work_mem TO '8MB';
ALTER ROLE app IN DATABASE shop SET search_path TO 'x';
ALTER DATABASE other SET work_mem TO '1MB';

\\unrestrict abc
\\connect shop
SET statement_timeout = 0;


--
-- Name: t; Type: TABLE; Schema: public; Owner: app owner
--

CREATE TABLE public.t (i integer);
ALTER TABLE public.t OWNER TO \"app owner\";
";

    #[test]
    fn database_properties_are_renamed_and_owners_collected() {
        let p = parse(SQL, "shop", "copy");
        assert_eq!(
            p.statements,
            [
                "COMMENT ON DATABASE \"copy\" IS 'two\nlines; with semicolons';",
                "ALTER DATABASE \"copy\" SET \"work_mem\" TO '8MB';",
                "ALTER ROLE \"app\" IN DATABASE \"copy\" SET \"search_path\" TO 'x';",
            ]
        );
        assert_eq!(p.skipped, ["ALTER DATABASE other SET work_mem TO '1MB';"]);
        assert_eq!(p.owners.into_iter().collect::<Vec<_>>(), ["app owner"]);
    }

    #[test]
    fn a_quoted_database_name_is_renamed_too() {
        let sql = "-- Name: \"Shop\"; Type: DATABASE PROPERTIES; Schema: -; Owner: o\n\
                   ALTER DATABASE \"Shop\" SET work_mem TO '8MB';\n";
        assert_eq!(
            parse(sql, "Shop", "copy").statements,
            ["ALTER DATABASE \"copy\" SET \"work_mem\" TO '8MB';"]
        );
    }

    #[test]
    fn statements_outside_database_entries_are_never_taken() {
        let sql = "-- Name: t; Type: TABLE; Schema: public; Owner: o\n\
                   ALTER DATABASE shop SET work_mem TO '8MB';\n";
        let p = parse(sql, "shop", "copy");
        assert!(p.statements.is_empty() && p.skipped.is_empty(), "{p:?}");
    }

    /// A comment or setting whose text holds what would end a statement,
    /// start another or pose as an entry is one value, written anew; what
    /// has any other shape is never run.
    #[test]
    fn quoted_text_cannot_split_a_statement_or_pose_as_an_entry() {
        let sql = "-- Name: DATABASE shop; Type: COMMENT; Schema: -; Owner: o\n\
                   COMMENT ON DATABASE shop IS 'harmless;\nALTER ROLE me SUPERUSER;\n\
                   -- Name: x; Type: TABLE; Schema: public; Owner: evil\n\\connect other\nend';\n\
                   ALTER ROLE me SUPERUSER;\n\
                   -- Name: shop; Type: DATABASE PROPERTIES; Schema: -; Owner: o\n\
                   ALTER DATABASE shop SET work_mem TO '8MB'; ALTER ROLE me SUPERUSER;\n\
                   ALTER DATABASE shop SET myapp.mode TO 'a', 'b''c';\n\
                   ALTER DATABASE shop SET x TO E'a';\n\
                   -- Name: DATABASE shop; Type: ACL; Schema: -; Owner: o\n\
                   REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;\n\
                   GRANT CONNECT ON DATABASE shop TO \"Reader\";\n";
        let p = parse(sql, "shop", "copy");
        assert_eq!(
            p.statements,
            [
                "COMMENT ON DATABASE \"copy\" IS 'harmless;\nALTER ROLE me SUPERUSER;\n\
                 -- Name: x; Type: TABLE; Schema: public; Owner: evil\n\\connect other\nend';",
                "ALTER DATABASE \"copy\" SET \"work_mem\" TO '8MB';",
                "ALTER DATABASE \"copy\" SET \"myapp\".\"mode\" TO 'a', 'b''c';",
                "REVOKE CONNECT, TEMPORARY ON DATABASE \"copy\" FROM PUBLIC;",
                "GRANT CONNECT ON DATABASE \"copy\" TO \"Reader\";",
            ]
        );
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
        assert!(
            p.skipped.iter().all(|s| !s.starts_with("COMMENT")),
            "{:?}",
            p.skipped
        );
        assert!(p.owners.is_empty(), "{:?}", p.owners);
    }
}
