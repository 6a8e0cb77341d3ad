//! PostgreSQL through `pg_dump --format=custom` per database (compression is
//! left to coffer) and `pg_dumpall --globals-only` for roles and tablespaces.
//! The password comes from a libpq passfile (PGPASSFILE), never argv.

use std::path::PathBuf;
use std::process::Command;

use super::process::{find_program, version_of, ChildStream};
use super::{check_component, Report, Sink, Source, SourceError};

pub struct PostgresSource {
    pub name: String,
    pub databases: Vec<String>,
    pub globals: bool,
    pub passfile: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

impl PostgresSource {
    fn connection_args(&self) -> Vec<String> {
        let mut a = vec!["--no-password".to_owned()];
        if let Some(h) = &self.host {
            a.push(format!("--host={h}"));
        }
        if let Some(p) = self.port {
            a.push(format!("--port={p}"));
        }
        if let Some(u) = &self.user {
            a.push(format!("--username={u}"));
        }
        a
    }

    fn command(&self, program: &PathBuf, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.env_remove("PGPASSWORD");
        if let Some(f) = &self.passfile {
            cmd.env("PGPASSFILE", f);
        }
        cmd
    }

    fn dump(
        &self,
        program: &PathBuf,
        args: Vec<String>,
        member: &str,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let mut child = ChildStream::spawn(self.command(program, &args))?;
        sink.stream(member, &mut child).map_err(SourceError::Sink)?;
        child.finish()?;
        let mut c = vec![program.display().to_string()];
        c.extend(args);
        report.commands.push(c);
        Ok(())
    }
}

fn program(name: &str) -> Result<PathBuf, SourceError> {
    find_program(name).ok_or_else(|| SourceError::NotFound {
        program: name.into(),
    })
}

impl Source for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.databases.is_empty() {
            if let Err(e) = program("pg_dump") {
                p.push(e.to_string());
            }
        }
        if self.globals {
            if let Err(e) = program("pg_dumpall") {
                p.push(e.to_string());
            }
        }
        p
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        let mut report = Report::default();
        if self.globals {
            let dumpall = program("pg_dumpall")?;
            let mut args = self.connection_args();
            args.push("--globals-only".into());
            let member = format!("postgres/{}/globals.sql", self.name);
            self.dump(&dumpall, args, &member, sink, &mut report)?;
            report.tool_versions.extend(version_of(&dumpall));
        }
        if !self.databases.is_empty() {
            let pg_dump = program("pg_dump")?;
            for db in &self.databases {
                check_component("database", db)?;
                let mut args = self.connection_args();
                args.extend([
                    "--format=custom".into(),
                    "--compress=0".into(),
                    format!("--dbname={db}"),
                ]);
                let member = format!("postgres/{}/{db}.dump", self.name);
                self.dump(&pg_dump, args, &member, sink, &mut report)?;
            }
            report.tool_versions.extend(version_of(&pg_dump));
        }
        Ok(report)
    }
}
