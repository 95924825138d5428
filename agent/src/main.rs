//! `drover-agent`: the device side of Drover. Enrollment, telemetry and the
//! update engine arrive with their issues; until then the binary only
//! identifies itself.

use clap::Parser;

/// The Drover device agent: enrolls a device, reports health and telemetry, and applies verified updates.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("drover-agent {}: no command given; see --help", env!("CARGO_PKG_VERSION"));
}
