//! How many readings per second the spool makes durable: one fsync per intake batch, measured
//! with batches of 1, 10 and 100 readings. Run it on the device's own storage:
//! `cargo run --release -p drover-agent --example spool_bench -- /var/lib/drover-agent-bench`
//! (default: a temporary directory under the current one; /tmp is often RAM).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_agent::report::spool::{NewReading, Spool};
use drover_proto::Epoch;

fn main() -> std::io::Result<()> {
    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::current_dir, |dir| Ok(dir.into()))?;
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let mut spool = Spool::open(dir.path(), 64 * 1024 * 1024, Epoch::from_random(&[1; 8]))?;
    let reading = NewReading {
        ts: 1_732_300_000_000,
        metrics: BTreeMap::from([("temp_c".to_owned(), 48.2), ("load".to_owned(), 0.75)]),
        versions: BTreeMap::new(),
    };
    println!("spool at {}", dir.path().display());
    for batch in [1usize, 10, 100] {
        let readings = vec![reading.clone(); batch];
        let started = Instant::now();
        let mut appended = 0usize;
        while started.elapsed() < Duration::from_secs(3) {
            spool.append(&readings, &BTreeMap::new())?;
            appended += batch;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "batch of {batch:>3}: {:>8.0} readings/s ({:.0} fsyncs/s)",
            appended as f64 / seconds,
            (appended / batch) as f64 / seconds
        );
    }
    Ok(())
}
