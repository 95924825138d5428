//! Crash points for the power-loss tests: `DROVER_AGENT_CRASH_AT=NAME[,NAME…]` makes the agent
//! kill itself with SIGKILL (no destructors, no flush: what a power cut leaves, short of the page
//! cache) when it reaches a point of that name. Each point sits right after a journal write or
//! right after a side effect, so a test that loops over [`POINTS`] covers every state boundary.

/// Every crash point, in the order an install (then a revert) reaches them.
pub const POINTS: &[&str] = &[
    "downloading",
    "downloaded",
    "verifying",
    "verified",
    "installing",
    "installed",
    "switched",
    "committing",
    "restarted",
    "healthy",
    "succeeded",
    "reverting",
    "switched_back",
    "reverted",
];

/// The environment variable naming the points.
pub const VARIABLE: &str = "DROVER_AGENT_CRASH_AT";

/// Kills the process if `name` is one of the points named in [`VARIABLE`].
pub fn point(name: &str) {
    let Ok(wanted) = std::env::var(VARIABLE) else {
        return;
    };
    if wanted.split(',').any(|w| w.trim() == name) {
        eprintln!("drover-agent: crash point {name} reached ({VARIABLE}); killing myself");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
