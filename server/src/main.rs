//! `drover`: the fleet server and its admin commands.

use std::process::ExitCode;

fn main() -> ExitCode {
    drover_server::cli::main()
}
