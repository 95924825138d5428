//! `drover-bench all`: every benchmark of issue 15 (ingest against the Python baseline, ingest
//! against the broker's ceiling, connected devices, rollouts, the agent), each run `--runs`
//! times, reduced to median, min and max, and judged against the goals: a table on stdout and
//! a "## Summary" section at the top of docs/BENCHMARKS.md with the machine and the commands.
//! A run that lost readings never passes a throughput goal, whatever its rate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::FromArgMatches;

use crate::connections::command_line;
use crate::procfs::{self, Machine};
use crate::report::{file_header, write_first_section};
use crate::{agent, baseline, ceiling, connections, rollout};

/// The section this tool owns, at the top of docs/BENCHMARKS.md.
pub const HEADING: &str = "## Summary";
/// Where the summary goes unless `--out` says otherwise.
const DEFAULT_OUT: &str = "docs/BENCHMARKS.md";

/// The benchmarks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// 5: the agent's verify, idle memory and size.
    Agent,
    /// 2: Drover on an external Mosquitto against the broker's ceiling.
    Ceiling,
    /// 1: Drover against the Python recipe.
    Baseline,
    /// 1, with Drover on PostgreSQL (`--database-url`).
    BaselinePostgres,
    /// 4: rollouts.
    Rollout,
    /// 3: connected devices.
    Connections,
}

/// Options of `drover-bench all`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each benchmark; figures are their median, min and max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Small sizes, for a smoke run (minutes rather than hours); the goals are not judged, and
    /// nothing is written unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Only these benchmarks (comma-separated) [default: all five].
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Bench>,
    /// Write the Summary section (and each benchmark's own section, from its last run) into
    /// this Markdown file [default: docs/BENCHMARKS.md; with --quick, nothing].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not build the binaries first (`cargo build` of the release server, the agent and the
    /// bundle maker).
    #[arg(long)]
    no_build: bool,
    /// The PostgreSQL server for `baseline-postgres`: a fresh database is made there per run.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
}

/// One benchmark's words after `drover-bench SUBCOMMAND`, full or quick.
fn words(bench: Bench, quick: bool) -> Vec<&'static str> {
    match (bench, quick) {
        (Bench::Agent, false) => vec!["--bundle-mib", "1024", "--idle-s", "20"],
        (Bench::Agent, true) => vec!["--bundle-mib", "64", "--idle-s", "3"],
        (Bench::Ceiling, false) => vec!["--devices", "1000", "--readings", "100"],
        (Bench::Ceiling, true) => vec!["--devices", "50", "--readings", "20"],
        (Bench::Baseline | Bench::BaselinePostgres, false) => vec![
            "--devices",
            "1000",
            "--readings",
            "100",
            "--rate",
            "100",
            "--hold-s",
            "30",
        ],
        (Bench::Baseline | Bench::BaselinePostgres, true) => vec![
            "--devices",
            "50",
            "--readings",
            "20",
            "--rate",
            "10",
            "--hold-s",
            "5",
        ],
        (Bench::Rollout, false) => vec!["--planned", "100000", "--simulated", "1000"],
        (Bench::Rollout, true) => vec!["--planned", "1000", "--simulated", "20"],
        (Bench::Connections, false) => vec!["--devices", "10000"],
        (Bench::Connections, true) => vec![
            "--devices",
            "50",
            "--steps",
            "25",
            "--settle-s",
            "1",
            "--cpu-window-s",
            "3",
            "--storm-timeout-s",
            "60",
        ],
    }
}

fn subcommand(bench: Bench) -> &'static str {
    match bench {
        Bench::Agent => "agent",
        Bench::Ceiling => "ceiling",
        Bench::Baseline | Bench::BaselinePostgres => "baseline",
        Bench::Rollout => "rollout",
        Bench::Connections => "connections",
    }
}

/// Parses a subcommand's options from its words, as its command line would.
fn parse<T: clap::Args + FromArgMatches>(name: &'static str, words: &[String]) -> Result<T> {
    let cmd = T::augment_args(clap::Command::new(name));
    let matches = cmd
        .try_get_matches_from(std::iter::once(name.to_string()).chain(words.iter().cloned()))
        .with_context(|| format!("options of {name}"))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// One figure over the runs.
#[derive(Debug, Clone, Default)]
struct Series {
    values: Vec<f64>,
}

impl Series {
    fn push(&mut self, v: f64) {
        self.values.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the middle two for an even count).
    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// What a goal asks of the median.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    /// Every run: none lost.
    Zero,
}

/// One row of the summary.
#[derive(Debug, Clone)]
struct Row {
    bench: &'static str,
    figure: String,
    unit: &'static str,
    goal: Option<Goal>,
    series: Series,
    /// What was offered and stored, per run, in words.
    note: Vec<String>,
}

impl Row {
    fn new(bench: &'static str, figure: &str, unit: &'static str, goal: Option<Goal>) -> Row {
        Row {
            bench,
            figure: figure.into(),
            unit,
            goal,
            series: Series::default(),
            note: Vec::new(),
        }
    }

    fn verdict(&self, judged: bool) -> &'static str {
        let (Some(goal), Some(median)) = (self.goal, self.series.median()) else {
            return "";
        };
        if !judged {
            return "(quick: not judged)";
        }
        let pass = match goal {
            Goal::AtLeast(g) => median >= g,
            Goal::AtMost(g) => median <= g,
            Goal::Zero => self.series.max().is_some_and(|m| m == 0.0),
        };
        if pass { "**pass**" } else { "**miss**" }
    }
}

fn goal_text(goal: Option<Goal>, unit: &str) -> String {
    match goal {
        None => String::new(),
        Some(Goal::AtLeast(g)) => format!("≥ {} {unit}", fmt(g)),
        Some(Goal::AtMost(g)) => format!("≤ {} {unit}", fmt(g)),
        Some(Goal::Zero) => "0 in every run".into(),
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The rows a benchmark fills, with their goals.
struct Table {
    rows: Vec<Row>,
    errors: Vec<(String, String)>,
}

impl Table {
    fn row(&mut self, bench: &'static str, figure: &str) -> &mut Row {
        let i = self
            .rows
            .iter()
            .position(|r| r.bench == bench && r.figure == figure)
            .unwrap_or_else(|| {
                self.rows.push(Row::new(bench, figure, "", None));
                self.rows.len() - 1
            });
        &mut self.rows[i]
    }

    fn add(&mut self, bench: &'static str, figure: &str, unit: &'static str, goal: Option<Goal>) {
        self.rows.push(Row::new(bench, figure, unit, goal));
    }

    fn push(&mut self, bench: &'static str, figure: &str, v: f64) {
        self.row(bench, figure).series.push(v);
    }

    fn note(&mut self, bench: &'static str, figure: &str, note: String) {
        self.row(bench, figure).note.push(note);
    }
}

const B1: &str = "1. ingest vs Python";
const B2: &str = "2. ingest vs broker";
const B3: &str = "3. connected devices";
const B4: &str = "4. rollouts";
const B5: &str = "5. agent";

fn goals(table: &mut Table, benches: &[Bench], quick: bool) {
    let fleet = if quick {
        "connected devices"
    } else {
        "10,000 devices"
    };
    for b in benches {
        match b {
            Bench::Baseline => {
                table.add(
                    B1,
                    "Drover / Python readings stored per s",
                    "×",
                    Some(Goal::AtLeast(20.0)),
                );
                table.add(B1, "Drover readings stored per s", "/s", None);
                table.add(B1, "Python recipe readings stored per s", "/s", None);
                table.add(B1, "readings lost, Drover (SQLite)", "", Some(Goal::Zero));
                table.add(B1, "readings lost, Python recipe", "", None);
            }
            Bench::BaselinePostgres => {
                table.add(
                    B1,
                    "Drover (PostgreSQL) / Python readings stored per s",
                    "×",
                    None,
                );
                table.add(B1, "Drover (PostgreSQL) readings stored per s", "/s", None);
                table.add(
                    B1,
                    "readings lost, Drover (PostgreSQL)",
                    "",
                    Some(Goal::Zero),
                );
            }
            Bench::Ceiling => {
                table.add(
                    B2,
                    "Drover as share of the broker's ceiling",
                    "%",
                    Some(Goal::AtLeast(90.0)),
                );
                table.add(B2, "broker ceiling (counting subscriber)", "msg/s", None);
                table.add(B2, "Drover readings stored per s", "/s", None);
                table.add(B2, "readings lost, Drover", "", Some(Goal::Zero));
            }
            Bench::Connections => {
                table.add(
                    B3,
                    &format!("server RSS with {fleet}"),
                    "MiB",
                    Some(Goal::AtMost(512.0)),
                );
                table.add(B3, "server memory per device", "KiB", None);
                table.add(B3, "server CPU at steady state", "% of a core", None);
                table.add(B3, "restart: every device back", "s", None);
                table.add(B3, "restart: p99 reconnect", "s", None);
            }
            Bench::Rollout => {
                table.add(B4, "three-phase rollout, create to completed", "s", None);
                table.add(B4, "planning: create with snapshot", "s", None);
            }
            Bench::Agent => {
                table.add(
                    B5,
                    "verify / openssl SHA-256 throughput",
                    "%",
                    Some(Goal::AtLeast(80.0)),
                );
                table.add(B5, "verify peak RSS", "MiB", Some(Goal::AtMost(16.0)));
                table.add(B5, "idle RSS", "MiB", Some(Goal::AtMost(8.0)));
                table.add(B5, "stripped binary", "MiB", Some(Goal::AtMost(6.0)));
            }
        }
    }
}

/// The workspace root: this binary is in target/release.
fn workspace_root() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("this binary is not inside a workspace's target directory")
}

/// The builds the benchmarks need.
const BUILDS: [&str; 3] = [
    "cargo build --release -p drover-server -p drover-bench",
    "cargo build --profile agent -p drover-agent",
    "cargo build --release -p drover-agent --example make-bundle",
];

async fn build(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for line in BUILDS {
        eprintln!("all: {line}");
        let status = tokio::process::Command::new(&cargo)
            .args(line.split_whitespace().skip(1))
            .current_dir(root)
            .status()
            .await
            .with_context(|| format!("running {line}"))?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
    }
    Ok(())
}

/// Runs every benchmark, prints the summary and writes it.
pub async fn run(args: Args) -> Result<()> {
    let command = command_line();
    let machine = procfs::machine();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let root = workspace_root()?;
    if !args.no_build {
        build(&root).await?;
    }
    let out = match (&args.out, args.quick) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(root.join(DEFAULT_OUT)),
        (None, true) => None,
    };
    let benches: Vec<Bench> = if args.only.is_empty() {
        vec![
            Bench::Agent,
            Bench::Ceiling,
            Bench::Baseline,
            Bench::BaselinePostgres,
            Bench::Rollout,
            Bench::Connections,
        ]
    } else {
        args.only.clone()
    };
    let mut table = Table {
        rows: Vec::new(),
        errors: Vec::new(),
    };
    goals(&mut table, &benches, args.quick);
    let started = std::time::Instant::now();
    let mut commands = Vec::new();
    for &bench in &benches {
        let name = subcommand(bench);
        let mut base: Vec<String> = words(bench, args.quick)
            .into_iter()
            .map(String::from)
            .collect();
        if bench == Bench::BaselinePostgres {
            base.extend(["--database-url".to_string(), args.database_url.clone()]);
        }
        commands.push(format!(
            "target/release/drover-bench {name} {}",
            base.join(" ")
        ));
        for run in 1..=args.runs {
            eprintln!("all: {name}, run {run} of {}", args.runs);
            let mut words = base.clone();
            // The last run writes the benchmark's own section, in full.
            if run == args.runs
                && let Some(out) = &out
            {
                words.push("--out".into());
                words.push(out.display().to_string());
            }
            let result = measure(bench, name, &words, &mut table).await;
            if let Err(e) = result {
                eprintln!("all: {name} run {run} failed: {e:#}");
                table
                    .errors
                    .push((format!("{name} run {run}"), format!("{e:#}")));
            }
        }
    }
    let section = summary(
        &table,
        &machine,
        &load,
        &command,
        &commands,
        &args,
        started.elapsed().as_secs_f64(),
    );
    println!("{section}");
    if let Some(out) = &out {
        write_first_section(out, &file_header(&machine), HEADING, &section)?;
        eprintln!("wrote the Summary section of {}", out.display());
    }
    if !table.errors.is_empty() {
        bail!("{} benchmark runs failed (see above)", table.errors.len());
    }
    Ok(())
}

async fn measure(bench: Bench, name: &'static str, words: &[String], t: &mut Table) -> Result<()> {
    match bench {
        Bench::Baseline => {
            let f = baseline::run(parse(name, words)?).await?;
            let (p, d) = (&f.python, &f.drover);
            t.push(B1, "Drover / Python readings stored per s", f.ratio());
            t.push(B1, "Drover readings stored per s", d.rate());
            t.note(B1, "Drover readings stored per s", d.run_note());
            t.push(B1, "Python recipe readings stored per s", p.rate);
            t.note(
                B1,
                "Python recipe readings stored per s",
                format!("{} of {} offered stored", p.stored, p.offered),
            );
            t.push(B1, "readings lost, Drover (SQLite)", d.lost() as f64);
            t.push(B1, "readings lost, Python recipe", p.lost() as f64);
        }
        Bench::BaselinePostgres => {
            let f = baseline::run(parse(name, words)?).await?;
            let d = &f.drover;
            t.push(
                B1,
                "Drover (PostgreSQL) / Python readings stored per s",
                f.ratio(),
            );
            t.push(B1, "Drover (PostgreSQL) readings stored per s", d.rate());
            t.note(
                B1,
                "Drover (PostgreSQL) readings stored per s",
                d.run_note(),
            );
            t.push(B1, "readings lost, Drover (PostgreSQL)", d.lost() as f64);
        }
        Bench::Ceiling => {
            let f = ceiling::run(parse(name, words)?).await?;
            t.push(B2, "Drover as share of the broker's ceiling", f.percent());
            t.push(B2, "broker ceiling (counting subscriber)", f.ceiling.rate());
            t.note(
                B2,
                "broker ceiling (counting subscriber)",
                format!("{} of {} counted", f.ceiling.taken, f.ceiling.offered),
            );
            t.push(B2, "Drover readings stored per s", f.drover.rate());
            t.note(
                B2,
                "Drover readings stored per s",
                format!("{} of {} stored", f.drover.taken, f.drover.offered),
            );
            t.push(B2, "readings lost, Drover", f.drover.lost() as f64);
        }
        Bench::Connections => {
            let r = connections::run(parse(name, words)?).await?;
            let last = r.steps.last().context("the run measured no step")?;
            let fleet = t
                .rows
                .iter()
                .find(|row| row.bench == B3)
                .map(|row| row.figure.clone())
                .unwrap_or_default();
            t.push(B3, &fleet, last.server.rss_kib as f64 / 1024.0);
            t.note(
                B3,
                &fleet,
                format!("{} of {} connected", last.connected, last.target),
            );
            if let Some(kib) = r.kib_per_device(last) {
                t.push(B3, "server memory per device", kib);
            }
            t.push(B3, "server CPU at steady state", last.steady.server);
            if let Some(storm) = &r.storm {
                if let Some(ms) = storm.all_back_ms {
                    t.push(B3, "restart: every device back", ms as f64 / 1000.0);
                } else {
                    t.note(
                        B3,
                        "restart: every device back",
                        format!("{} of {} back in time", storm.reconnected, storm.before),
                    );
                }
                if let Some(ms) = crate::report::percentile(&storm.reconnect_ms, 0.99) {
                    t.push(B3, "restart: p99 reconnect", ms as f64 / 1000.0);
                }
            }
        }
        Bench::Rollout => {
            let r = rollout::run(parse(name, words)?).await?;
            t.push(B4, "three-phase rollout, create to completed", r.rollout_s);
            t.note(
                B4,
                "three-phase rollout, create to completed",
                format!("{} devices: {}", r.simulated, r.counts),
            );
            t.push(B4, "planning: create with snapshot", r.create_s);
            t.note(
                B4,
                "planning: create with snapshot",
                format!("{} devices", r.planned),
            );
        }
        Bench::Agent => {
            let f = agent::run(parse(name, words)?).await?;
            t.push(
                B5,
                "verify / openssl SHA-256 throughput",
                f.verify_ratio() * 100.0,
            );
            t.push(B5, "verify peak RSS", f.verify.peak_kib as f64 / 1024.0);
            t.push(B5, "idle RSS", f.idle_rss_kib as f64 / 1024.0);
            t.push(
                B5,
                "stripped binary",
                f.binary_bytes as f64 / (1024.0 * 1024.0),
            );
            for p in &f.packages {
                let figure = format!("Debian {} {} (for comparison)", p.name, p.version);
                if !t.rows.iter().any(|r| r.figure == figure) {
                    // Beside the agent's own size, not after the other benchmarks.
                    let at = t
                        .rows
                        .iter()
                        .rposition(|r| r.bench == B5)
                        .map_or(t.rows.len(), |i| i + 1);
                    t.rows.insert(at, Row::new(B5, &figure, "MiB", None));
                }
                t.push(B5, &figure, p.installed_kib as f64 / 1024.0);
            }
        }
    }
    Ok(())
}

fn summary(
    t: &Table,
    m: &Machine,
    load: &str,
    command: &str,
    commands: &[String],
    args: &Args,
    took_s: f64,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Measured {} on {}: {} cores, {:.1} GiB memory, {}; {}; load average {load} at the \
         start. The load generators share the machine with what they measure. {} run{} of each \
         benchmark ({:.0} min in all); each figure is the median of the runs, with min and max. \
         A goal is judged on the median; a run that lost readings fails its zero-loss goal, and \
         its rate is then not a speed.{}\n",
        m.date,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.os,
        m.rustc,
        args.runs,
        if args.runs == 1 { "" } else { "s" },
        took_s / 60.0,
        if args.quick {
            " **Quick sizes (a smoke run): not the issue's loads, goals not judged.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "```sh\ncargo run --release -p drover-bench -- all --runs {}{}\n# which builds\n{}\n# and runs each of these {} time{}:\n{}\n```\n",
        args.runs,
        if args.quick { " --quick" } else { "" },
        BUILDS.join("\n"),
        args.runs,
        if args.runs == 1 { "" } else { "s" },
        commands.join("\n")
    );
    let _ = writeln!(o, "(this run: `{command}`)\n");
    let _ = writeln!(
        o,
        "| benchmark | figure | goal | median | min | max | verdict | offered and stored, per run |"
    );
    let _ = writeln!(o, "|---|---|---|---:|---:|---:|---|---|");
    for r in &t.rows {
        let cell = |v: Option<f64>| {
            v.map(|v| format!("{} {}", fmt(v), r.unit).trim().to_string())
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.bench,
            r.figure,
            goal_text(r.goal, r.unit),
            cell(r.series.median()),
            cell(r.series.min()),
            cell(r.series.max()),
            r.verdict(!args.quick),
            r.note.join("; ")
        );
    }
    o.push('\n');
    if !t.errors.is_empty() {
        let _ = writeln!(o, "Runs that failed:\n");
        for (what, e) in &t.errors {
            let _ = writeln!(o, "- {what}: `{}`", e.replace('`', "'"));
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "Each benchmark's own section below holds its last run in full, with its method. \
         Ingest (1) runs on SQLite (the goal's store) and again with the server on PostgreSQL \
         (`baseline-postgres`, a fresh database on the local server each run); ingest (2) is on \
         SQLite."
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_run() {
        let s = Series {
            values: vec![3.0, 1.0, 2.0],
        };
        assert_eq!(s.median(), Some(2.0));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(3.0));
        let even = Series {
            values: vec![4.0, 1.0, 2.0, 3.0],
        };
        assert_eq!(even.median(), Some(2.5));
        assert_eq!(Series::default().median(), None);
    }

    #[test]
    fn a_loss_in_any_run_misses_the_zero_goal() {
        let mut row = Row::new(B1, "lost", "", Some(Goal::Zero));
        row.series.values = vec![0.0, 0.0, 5.0];
        assert_eq!(row.verdict(true), "**miss**");
        row.series.values = vec![0.0, 0.0, 0.0];
        assert_eq!(row.verdict(true), "**pass**");
        let mut ratio = Row::new(B1, "ratio", "×", Some(Goal::AtLeast(20.0)));
        ratio.series.values = vec![25.0, 19.0, 21.0];
        assert_eq!(ratio.verdict(true), "**pass**");
        assert_eq!(ratio.verdict(false), "(quick: not judged)");
    }

    #[test]
    fn every_benchmarks_words_parse() {
        for bench in [
            Bench::Agent,
            Bench::Ceiling,
            Bench::Baseline,
            Bench::BaselinePostgres,
            Bench::Rollout,
            Bench::Connections,
        ] {
            for quick in [false, true] {
                let words: Vec<String> =
                    words(bench, quick).into_iter().map(String::from).collect();
                let parsed = match bench {
                    Bench::Agent => parse::<agent::Args>("agent", &words).map(drop),
                    Bench::Ceiling => parse::<ceiling::Args>("ceiling", &words).map(drop),
                    Bench::Baseline | Bench::BaselinePostgres => {
                        parse::<baseline::Args>("baseline", &words).map(drop)
                    }
                    Bench::Rollout => parse::<rollout::Args>("rollout", &words).map(drop),
                    Bench::Connections => {
                        parse::<connections::Args>("connections", &words).map(drop)
                    }
                };
                assert!(parsed.is_ok(), "{bench:?} quick={quick}: {parsed:?}");
            }
        }
    }
}
