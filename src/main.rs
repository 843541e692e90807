//! `waitroom-worker`: the command line ([`cli`]) over the library.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
