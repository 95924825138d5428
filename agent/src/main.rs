//! `drover-agent`: the command line over the `drover_agent` library. Parses flags, sets up logging
//! and the runtime, calls one command, and turns its error into one line on stderr
//! (`drover-agent: …`) and the contract's exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use drover_agent::config::AgentConfig;
use drover_agent::enroll::{self, EnrollFlags, EnrollOptions, Outcome};
use drover_agent::simulate::{self, SimulateOptions};
use drover_agent::state::{CONFIG_FILE, StateDir};
use drover_agent::status::Status;
use drover_agent::{Error, bundle, daemon, update};

/// The Drover device agent: enrolls a device, keeps its certificate alive, reports health and
/// telemetry, and applies verified updates.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version, arg_required_else_help = true)]
struct Cli {
    /// Where the agent keeps its key, certificates, trust document and configuration.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "DROVER_AGENT_STATE_DIR",
        default_value = "/var/lib/drover-agent"
    )]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the device key, pin the fleet CA and enroll with the server.
    Enroll(EnrollCommand),
    /// Show this device's enrollment and certificate.
    Status {
        /// Print one JSON object instead of `name: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent until SIGTERM or Ctrl-C: intake, spool, MQTT telemetry and health, and
    /// certificate renewal.
    Run,
    /// Hand one reading to the running agent's local intake and print its sequence number.
    Send {
        /// A metric and its value, e.g. temp_c=48.2 (repeat for more metrics in the reading).
        #[arg(value_name = "METRIC=VALUE", allow_hyphen_values = true)]
        readings: Vec<String>,
    },
    /// Check a bundle file (.drover) with every check install makes, and install nothing: exit 0
    /// and a summary when valid, 1 and the failed check otherwise.
    Verify {
        /// Check against this root public key (PEM, or base64 of the raw 32 bytes) instead of
        /// the enrolled device's trust; device type and version are then not checked.
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
        /// The bundle file.
        #[arg(value_name = "FILE.drover")]
        file: PathBuf,
    },
    /// Install a bundle file (.drover) offline, through the same checks as verify and the same
    /// installers and commit window as an update from the server.
    Install {
        /// The bundle file.
        #[arg(value_name = "FILE.drover")]
        file: PathBuf,
    },
    /// Run N simulated devices in this process, each a real enrollment, certificate, MQTT
    /// session and update engine (with a simulated installer), for demos, tests and load.
    /// State lives in --state-dir (default ./drover-sim): run it again to bring the same devices
    /// back. Prints a summary line at SIGTERM or Ctrl-C.
    Simulate(SimulateCommand),
    /// The built-in simulated A/B firmware backend, for tests and demos: use it as the `ab`
    /// installer's commands (`drover-agent ab-sim --dir DIR install {payload} {slot}`, …).
    #[command(hide = true)]
    AbSim {
        /// The simulated device's slots and boot pointer.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(subcommand)]
        command: AbSimCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AbSimCommand {
    /// Write PAYLOAD into SLOT (the inactive one).
    Install { payload: PathBuf, slot: String },
    /// Boot SLOT on the next boot only.
    SwitchOnce { slot: String },
    /// Simulate a reboot (a PANIC image falls back), then stop the agent in DROVER_AGENT_PID.
    Reboot,
    /// Print the running slot.
    BootedSlot,
    /// Make the running slot the default.
    Confirm,
}

#[derive(Debug, Args)]
struct SimulateCommand {
    /// The device API, as printed by `drover token create` (https://HOST:8443).
    #[arg(long, value_name = "URL")]
    server: String,
    /// An enrollment token with a use for every new device (or set DROVER_AGENT_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DROVER_AGENT_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The fleet CA's hash, as printed by `drover token create` (sha256:HEX).
    #[arg(long, value_name = "sha256:HEX")]
    ca_hash: String,
    /// How many devices to run (1 to 100000).
    #[arg(long, value_name = "N")]
    devices: u32,
    /// The device type every simulated device claims.
    #[arg(long, value_name = "TYPE", default_value = enroll::DEFAULT_DEVICE_TYPE)]
    device_type: String,
    /// A tag every simulated device claims (repeatable); the token's tags win.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Readings per second per device (temp_c, cpu_pct, inference_ms, confidence).
    #[arg(long, value_name = "HZ", default_value_t = 0.2)]
    rate: f64,
    /// Versions (of any bundle) whose health check fails, so their updates are reverted
    /// (comma-separated, e.g. 2.0.0,2.1.0).
    #[arg(long, value_name = "V,…", default_value = "")]
    fail_versions: String,
    /// While version V is installed, multiply METRIC by FACTOR (comma-separated, e.g.
    /// 2.0.0:inference_ms=1.5); metrics: temp_c, cpu_pct, inference_ms, confidence.
    #[arg(long, value_name = "V:METRIC=FACTOR,…", default_value = "")]
    degrade_versions: String,
    /// Noise on every reading, as a share of the metric's typical value (0 to 1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.03)]
    noise: f64,
    /// How far devices' typical values differ from each other (0: every device alike, 1: the
    /// full spread of a real fleet).
    #[arg(long, value_name = "SHARE", default_value_t = 1.0)]
    spread: f64,
    /// The chance that a reading is an anomaly: a hot board, a slow or an unsure model (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.001)]
    anomaly_rate: f64,
    /// Seconds between each device's health reports.
    #[arg(long, value_name = "S", default_value_t = 30)]
    heartbeat: u64,
    /// New enrollments and device starts per second (the server and broker see a bounded
    /// rate of handshakes; the server's own limit, 1000 a minute by default, is retried).
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    enroll_rate: f64,
}

#[derive(Debug, Args)]
struct EnrollCommand {
    /// The device API, as printed by `drover token create` (https://HOST:8443).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The enrollment token (or set DROVER_AGENT_TOKEN, which keeps it out of `ps`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DROVER_AGENT_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The fleet CA's hash, as printed by `drover token create` (sha256:HEX); the token is sent
    /// only to a server whose CA matches it.
    #[arg(long, value_name = "sha256:HEX")]
    ca_hash: String,
    /// The device type this device claims.
    #[arg(long, value_name = "TYPE", default_value = enroll::DEFAULT_DEVICE_TYPE)]
    device_type: String,
    /// A tag this device claims (repeatable); the token's tags win.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// The host name shown to operators [default: /etc/hostname].
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return usage_error(&e),
    };
    let state_dir_given = matches.value_source("state_dir") == Some(ValueSource::CommandLine);
    init_logging(matches!(cli.command, Command::Run));
    match execute(cli, state_dir_given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(cli: Cli, state_dir_given: bool) -> Result<(), Error> {
    let state = StateDir::new(cli.state_dir);
    match cli.command {
        Command::Status { json } => {
            let status = Status::read(&state)?;
            if json {
                println!("{}", status.to_json());
            } else {
                print!("{}", status.to_text());
            }
            Ok(())
        }
        Command::Enroll(flags) => {
            let options = EnrollOptions::from_flags(
                EnrollFlags {
                    server: flags.server,
                    token: flags.token,
                    ca_hash: flags.ca_hash,
                    device_type: flags.device_type,
                    tags: flags.tags,
                    hostname: flags.hostname,
                },
                enroll::system_hostname,
            )?;
            match runtime()?.block_on(enroll::enroll(&state, &options, drover_agent::now))? {
                Outcome::AlreadyEnrolled(e) => {
                    println!("already enrolled as {} with {}", e.device_id, e.server);
                }
                Outcome::Enrolled(e) => {
                    println!("enrolled as {} with {}", e.device_id, e.server);
                    println!("device_id: {}", e.device_id);
                    println!("status: {}", e.status);
                    if e.status == "pending" {
                        println!(
                            "an operator must accept this device before it is trusted (dashboard, or POST /api/v1/devices/{}/accept)",
                            e.device_id
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Run => runtime()?.block_on(daemon::run(&state)),
        Command::Simulate(flags) => {
            let root = if state_dir_given {
                state.root().to_owned()
            } else {
                PathBuf::from("drover-sim")
            };
            let options = simulate_options(flags, root)?;
            let summary = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Runtime(format!("cannot start the async runtime: {e}")))?
                .block_on(simulate::run(options))?;
            println!("{summary}");
            Ok(())
        }
        Command::Send { readings } => {
            let seq = drover_agent::report::intake::send(state.root(), &readings)?;
            println!("{seq}");
            Ok(())
        }
        Command::Verify { root_key, file } => {
            let device = match root_key {
                Some(_) if state_dir_given => {
                    return Err(Error::Usage(
                        "give either --state-dir (check against the enrolled device) or --root-key (check against a root key alone), not both".into(),
                    ));
                }
                Some(path) => bundle::Device::away(&path)?,
                None => bundle::Device::enrolled(&state).map_err(|e| match e {
                    Error::NotEnrolled { state_dir } => Error::State(format!(
                        "not enrolled (state directory {}): enroll this device first, or check the file against the fleet's root public key with --root-key FILE",
                        state_dir.display()
                    )),
                    other => other,
                })?,
            };
            let summary = bundle::verify(&file, &device, drover_agent::now())?;
            print!("{}", summary.to_text());
            Ok(())
        }
        Command::Install { file } => {
            let config = AgentConfig::load(&state.file(CONFIG_FILE))?;
            let done = runtime()?.block_on(update::install_file(&state, &config, &file))?;
            println!("{done}");
            Ok(())
        }
        Command::AbSim { dir, command } => {
            use drover_agent::update::absim::{self, SimCommand};
            let command = match command {
                AbSimCommand::Install { payload, slot } => SimCommand::Install { payload, slot },
                AbSimCommand::SwitchOnce { slot } => SimCommand::SwitchOnce { slot },
                AbSimCommand::Reboot => SimCommand::Reboot,
                AbSimCommand::BootedSlot => SimCommand::BootedSlot,
                AbSimCommand::Confirm => SimCommand::Confirm,
            };
            println!("{}", absim::run(&dir, &command)?);
            Ok(())
        }
    }
}

/// Checks the `simulate` flags; a bad one is a usage error naming it.
fn simulate_options(flags: SimulateCommand, root: PathBuf) -> Result<SimulateOptions, Error> {
    let enroll = EnrollOptions::from_flags(
        EnrollFlags {
            server: flags.server,
            token: flags.token,
            ca_hash: flags.ca_hash,
            device_type: flags.device_type,
            tags: flags.tags,
            hostname: Some("simulated".into()),
        },
        enroll::system_hostname,
    )?;
    let options = SimulateOptions {
        enroll,
        devices: flags.devices,
        root,
        rate_hz: flags.rate,
        noise: flags.noise,
        spread: flags.spread,
        anomaly_rate: flags.anomaly_rate,
        heartbeat: std::time::Duration::from_secs(flags.heartbeat),
        enroll_rate: flags.enroll_rate,
        fail_versions: simulate::parse_fail_versions(&flags.fail_versions).map_err(Error::Usage)?,
        degrade: simulate::parse_degrade(&flags.degrade_versions).map_err(Error::Usage)?,
    };
    options.validate()?;
    Ok(options)
}

/// One thread is enough for the agent and keeps it small on a board.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Logs go to stderr; `DROVER_AGENT_LOG` (error, warn, info, debug, trace) sets the level.
/// The daemon stamps each line with the time; one-shot commands do not.
fn init_logging(daemon: bool) {
    let level = std::env::var("DROVER_AGENT_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(if daemon {
            tracing_subscriber::filter::LevelFilter::INFO
        } else {
            tracing_subscriber::filter::LevelFilter::WARN
        });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(level);
    if daemon {
        builder.init();
    } else {
        builder.without_time().init();
    }
}

/// Help and version go to stdout as clap prints them; every other parse error becomes one line,
/// `drover-agent: …`, and exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let message = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error:")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("drover-agent: {message}; see drover-agent --help");
    ExitCode::from(2)
}
