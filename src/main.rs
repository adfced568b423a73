use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let _cli = syn2mas::cli::Cli::parse();
    ExitCode::from(syn2mas::exit::OK)
}
