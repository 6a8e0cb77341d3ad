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
pub(super) fn parse(sql: &str, from: &str, target: &str) -> Prelude {
    let mut p = Prelude::default();
    let mut database_level = false;
    let mut pending = String::new();
    for line in sql.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ") {
            pending.clear();
            let kind = field(header, "; Type: ");
            database_level = kind == Some("DATABASE PROPERTIES")
                || (kind == Some("COMMENT") && header.starts_with("DATABASE "));
            // The database's own entries are its owner's, whom the restore
            // replaces by making the target.
            if let Some(owner) = header.rsplit_once("; Owner: ").map(|(_, o)| o) {
                if kind != Some("DATABASE") && !database_level && !owner.is_empty() && owner != "-"
                {
                    p.owners.insert(owner.to_owned());
                }
            }
            continue;
        }
        if line.starts_with('\\') {
            // `\connect` ends the database's entries; session settings
            // for the next connection follow.
            database_level = false;
            continue;
        }
        if !database_level || line.starts_with("--") {
            continue;
        }
        if line.is_empty() && pending.is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(line);
        if line.ends_with(';') {
            let statement = std::mem::take(&mut pending);
            match rename(&statement, from, target) {
                Some(s) => p.statements.push(s),
                None => p.skipped.push(statement),
            }
        }
    }
    p
}

/// The text of `key` in a header, up to the next `; `.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = &header[header.find(key)? + key.len()..];
    Some(rest.split("; ").next().unwrap_or(rest))
}

/// `name` as pg_dump writes an identifier: bare when it is lower case,
/// digits and `_`, else double-quoted.
fn identifiers(name: &str) -> [String; 2] {
    [
        format!("\"{}\"", name.replace('"', "\"\"")),
        name.to_owned(),
    ]
}

/// The statement with database `from` replaced by `target`, if it is one
/// of the three forms pg_dump writes for a database's own properties.
fn rename(statement: &str, from: &str, target: &str) -> Option<String> {
    let to = format!("\"{target}\"");
    for id in identifiers(from) {
        for (head, tail) in [
            ("COMMENT ON DATABASE ", " IS "),
            ("ALTER DATABASE ", " SET "),
        ] {
            if let Some(rest) = statement
                .strip_prefix(head)
                .and_then(|r| r.strip_prefix(id.as_str()))
                .filter(|r| r.starts_with(tail))
            {
                return Some(format!("{head}{to}{rest}"));
            }
        }
        if statement.starts_with("ALTER ROLE ") {
            let marker = format!(" IN DATABASE {id} SET ");
            if let Some(at) = statement.find(&marker) {
                return Some(format!(
                    "{} IN DATABASE {to} SET {}",
                    &statement[..at],
                    &statement[at + marker.len()..]
                ));
            }
        }
    }
    None
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
                "ALTER DATABASE \"copy\" SET work_mem TO '8MB';",
                "ALTER ROLE app IN DATABASE \"copy\" SET search_path TO 'x';",
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
            ["ALTER DATABASE \"copy\" SET work_mem TO '8MB';"]
        );
    }

    #[test]
    fn statements_outside_database_entries_are_never_taken() {
        let sql = "-- Name: t; Type: TABLE; Schema: public; Owner: o\n\
                   ALTER DATABASE shop SET work_mem TO '8MB';\n";
        let p = parse(sql, "shop", "copy");
        assert!(p.statements.is_empty() && p.skipped.is_empty(), "{p:?}");
    }
}
