use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = coffer::cli::Cli::parse();
    match coffer::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => std::process::ExitCode::from(coffer::cli::report(&err)),
    }
}
