//! Any program's standard output (e.g. `redis-cli --rdb -`). The run fails if
//! the program exits non-zero.

use std::process::Command;

use super::process::{find_program, ChildStream};
use super::{Report, Sink, Source, SourceError};

pub struct CommandSource {
    pub name: String,
    pub argv: Vec<String>,
}

impl Source for CommandSource {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        match self.argv.first() {
            Some(p) if find_program(p).is_none() => vec![format!("{p} not found in PATH")],
            Some(_) => Vec::new(),
            None => vec!["argv is empty".into()],
        }
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| SourceError::Invalid("argv is empty".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        let mut child = ChildStream::spawn(cmd)?;
        sink.stream(&format!("command/{}", self.name), &mut child)
            .map_err(SourceError::Sink)?;
        child.finish()?;
        Ok(Report {
            commands: vec![self.argv.clone()],
            ..Report::default()
        })
    }
}
