//! What installers do to the device, each step safe to repeat after a crash:
//!
//! - `files`: releases under `<target>/<name>/releases/<version>/`, built in a hidden temporary
//!   directory and renamed into place whole; `<target>/<name>/current` is a symlink replaced by
//!   rename, so it always names a complete release (or is absent before the first install).
//! - `ab` and `script` run the owner's commands through `sh -c`, with `{payload}` and `{slot}`
//!   replaced by shell-quoted values and the `DROVER_*` variables set (see [`Env`]).

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover_proto::{Kind, PayloadFormat, SafeName, Version};
use tokio::io::AsyncReadExt as _;

/// Releases kept per bundle name (the current one and the one before it among them).
pub const RELEASES_KEPT: usize = 3;
/// Most output kept from one command.
const OUTPUT_BYTES: usize = 4096;

/// A payload staged and verified, with the manifest's description of it.
#[derive(Clone, Debug)]
pub struct StagedPayload {
    /// Its name in the manifest.
    pub name: SafeName,
    /// `file` or `tar`.
    pub format: PayloadFormat,
    /// The verified file in the staging directory.
    pub path: PathBuf,
}

/// `<target>/<name>`.
pub fn bundle_dir(target: &Path, name: &SafeName) -> PathBuf {
    target.join(name.as_str())
}

/// `<target>/<name>/releases/<version>`.
pub fn release_dir(target: &Path, name: &SafeName, version: &Version) -> PathBuf {
    bundle_dir(target, name)
        .join("releases")
        .join(version.to_string())
}

/// The version `<target>/<name>/current` points at, if any.
pub fn current_version(target: &Path, name: &SafeName) -> Option<String> {
    let link = fs::read_link(bundle_dir(target, name).join("current")).ok()?;
    link.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|_| link.parent() == Some(Path::new("releases")))
}

/// Builds the release for `version` from `payloads` (a `file` payload is copied under its name, a
/// `tar` payload unpacked), unless `current` already points at a complete one. A leftover
/// temporary or an unfinished earlier build is removed first.
pub fn build_release(
    target: &Path,
    name: &SafeName,
    kind: Kind,
    version: &Version,
    payloads: &[StagedPayload],
) -> io::Result<PathBuf> {
    let release = release_dir(target, name, version);
    if current_version(target, name).as_deref() == Some(&version.to_string()) && release.is_dir() {
        return Ok(release);
    }
    let releases = release.parent().unwrap_or(target).to_owned();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&releases)?;
    let tmp = releases.join(format!(".{version}.tmp"));
    remove_dir_if_present(&tmp)?;
    remove_dir_if_present(&release)?;
    fs::DirBuilder::new().mode(0o755).create(&tmp)?;
    let exec = matches!(kind, Kind::Agent | Kind::Application);
    for payload in payloads {
        match payload.format {
            PayloadFormat::File => {
                let to = tmp.join(payload.name.as_str());
                copy_durably(&payload.path, &to, if exec { 0o755 } else { 0o644 })?;
            }
            PayloadFormat::Tar => unpack_safely(&payload.path, &tmp)?,
        }
    }
    sync_tree(&tmp)?;
    fs::rename(&tmp, &release)?;
    File::open(&releases)?.sync_all()?;
    Ok(release)
}

/// Points `<target>/<name>/current` at `version` (or removes it for `None`) in one rename.
pub fn switch_current(target: &Path, name: &SafeName, version: Option<&Version>) -> io::Result<()> {
    let dir = bundle_dir(target, name);
    let current = dir.join("current");
    match version {
        Some(version) => {
            let tmp = dir.join(".current.tmp");
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("releases").join(version.to_string()), &tmp)?;
            fs::rename(&tmp, &current)?;
        }
        None => match fs::remove_file(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        },
    }
    File::open(&dir)?.sync_all()
}

/// Removes the release of `version` unless `current` points at it.
pub fn remove_release(target: &Path, name: &SafeName, version: &Version) -> io::Result<()> {
    if current_version(target, name).as_deref() == Some(&version.to_string()) {
        return Ok(());
    }
    remove_dir_if_present(&release_dir(target, name, version))
}

/// Keeps the releases in `keep` and the newest others up to [`RELEASES_KEPT`] in all; removes the
/// rest and any temporary leftovers.
pub fn prune(target: &Path, name: &SafeName, keep: &[&Version]) -> io::Result<()> {
    let releases = bundle_dir(target, name).join("releases");
    let mut others = Vec::new();
    for entry in fs::read_dir(&releases)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            remove_dir_if_present(&entry.path())?;
            continue;
        }
        match file_name.parse::<Version>() {
            Ok(v) if keep.contains(&&v) => {}
            Ok(v) => others.push(v),
            Err(_) => {}
        }
    }
    others.sort();
    let room = RELEASES_KEPT.saturating_sub(keep.len());
    let excess = others.len().saturating_sub(room);
    for v in &others[..excess] {
        remove_dir_if_present(&releases.join(v.to_string()))?;
    }
    Ok(())
}

fn remove_dir_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_durably(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)?;
    io::copy(&mut source, &mut out)?;
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    out.sync_all()
}

/// Unpacks a tar payload into `into`, taking only regular files and directories with plain
/// relative paths: a link, a device, an absolute path or `..` refuses the whole payload.
pub fn unpack_safely(archive: &Path, into: &Path) -> io::Result<()> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut archive = tar::Archive::new(File::open(archive)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.as_os_str().is_empty()
            || !path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse(format!(
                "the tar payload holds `{}`, which is not a plain relative path",
                path.display()
            )));
        }
        let to = into.join(&path);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&to)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = to.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)?;
                }
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o600)
                    .open(&to)?;
                io::copy(&mut (&mut entry).take(u64::MAX), &mut out)?;
                out.set_permissions(fs::Permissions::from_mode(mode | 0o400))?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(refuse(format!(
                    "the tar payload holds `{}` of type {other:?}; only files and directories are installed",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// fsyncs every file and directory under `dir`, so the rename that publishes it publishes data.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Variables every installer, restart and health command sees.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `(NAME, value)` pairs.
    pub vars: Vec<(&'static str, String)>,
}

impl Env {
    /// `DROVER_AGENT_PID`, `DROVER_STATE_DIR`, `DROVER_BUNDLE_NAME`, `DROVER_BUNDLE_KIND`,
    /// `DROVER_BUNDLE_VERSION` and (when there is one) `DROVER_PREVIOUS_VERSION`.
    pub fn for_update(
        state_dir: &Path,
        name: &SafeName,
        kind: Kind,
        version: &Version,
        previous: Option<&Version>,
    ) -> Env {
        let mut vars = vec![
            ("DROVER_AGENT_PID", std::process::id().to_string()),
            ("DROVER_STATE_DIR", state_dir.display().to_string()),
            ("DROVER_BUNDLE_NAME", name.to_string()),
            ("DROVER_BUNDLE_KIND", kind.to_string()),
            ("DROVER_BUNDLE_VERSION", version.to_string()),
        ];
        if let Some(previous) = previous {
            vars.push(("DROVER_PREVIOUS_VERSION", previous.to_string()));
        }
        Env { vars }
    }

    /// The same with one more variable.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Env {
        self.vars.push((name, value.into()));
        self
    }
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    /// Exit status 0 within the time allowed.
    pub ok: bool,
    /// `exit status 3`, `timed out after 60 s`, `could not start: …`.
    pub how: String,
    /// Its standard output (the first [`OUTPUT_BYTES`]).
    pub stdout: String,
    /// A log line: the command, how it ended, and the tail of its output.
    pub log: String,
}

/// Replaces `{payload}` and `{slot}` in `template` with shell-quoted values.
pub fn expand(template: &str, payload: Option<&Path>, slot: Option<&str>) -> String {
    let mut text = template.to_owned();
    if let Some(payload) = payload {
        text = text.replace("{payload}", &shell_quote(&payload.display().to_string()));
    }
    if let Some(slot) = slot {
        text = text.replace("{slot}", &shell_quote(slot));
    }
    text
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Runs `command` through `sh -c` with `env`, killing it after `timeout`.
pub async fn run(command: &str, env: &Env, timeout: Duration) -> Ran {
    let mut child = match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let how = format!("could not start: {e}");
            return Ran {
                ok: false,
                log: format!("$ {command}\n{how}"),
                how,
                stdout: String::new(),
            };
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read_all = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let o = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let e = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(o, e);
        let status = child.wait().await;
        (status, out, err)
    };
    let (how, ok, out, err) = match tokio::time::timeout(timeout, read_all).await {
        Ok((Ok(status), out, err)) => (
            match status.code() {
                Some(code) => format!("exit status {code}"),
                None => format!("ended by {status}"),
            },
            status.success(),
            out,
            err,
        ),
        Ok((Err(e), out, err)) => (format!("could not wait for it: {e}"), false, out, err),
        Err(_) => {
            // The whole process group: a shell's children must not outlive the timeout.
            if let Some(pid) = child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            (
                format!("timed out after {} s", timeout.as_secs()),
                false,
                Vec::new(),
                Vec::new(),
            )
        }
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut combined = text(&out);
    combined.push_str(&text(&err));
    let tail = tail_of(combined.trim_end(), OUTPUT_BYTES);
    let mut log = format!("$ {command}\n{how}");
    if !tail.is_empty() {
        log.push('\n');
        log.push_str(tail);
    }
    Ran {
        ok,
        how,
        stdout: text(&out[..out.len().min(OUTPUT_BYTES)]),
        log,
    }
}

fn tail_of(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> SafeName {
        SafeName::parse("detector").unwrap()
    }

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    fn file_payload(dir: &Path, content: &[u8]) -> StagedPayload {
        let path = dir.join("staged");
        fs::write(&path, content).unwrap();
        StagedPayload {
            name: SafeName::parse("model.onnx").unwrap(),
            format: PayloadFormat::File,
            path,
        }
    }

    #[test]
    fn releases_switch_atomically_and_prune_to_three() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("models");
        let payload = file_payload(dir.path(), b"weights");
        for version in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            let release = build_release(
                &target,
                &name(),
                Kind::Model,
                &v(version),
                std::slice::from_ref(&payload),
            )
            .unwrap();
            assert_eq!(fs::read(release.join("model.onnx")).unwrap(), b"weights");
            switch_current(&target, &name(), Some(&v(version))).unwrap();
            assert_eq!(current_version(&target, &name()).as_deref(), Some(version));
        }
        prune(&target, &name(), &[&v("1.3.0"), &v("1.0.0")]).unwrap();
        let mut left: Vec<_> = fs::read_dir(target.join("detector/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1.0.0", "1.2.0", "1.3.0"]);
        assert_eq!(
            fs::read(target.join("detector/current/model.onnx")).unwrap(),
            b"weights"
        );
        switch_current(&target, &name(), None).unwrap();
        assert_eq!(current_version(&target, &name()), None);
    }

    #[test]
    fn a_tar_payload_unpacks_but_never_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.tar");
        let mut builder = tar::Builder::new(File::create(&good).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "bin/run.sh", &b"hi"[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let into = dir.path().join("out");
        fs::create_dir(&into).unwrap();
        unpack_safely(&good, &into).unwrap();
        assert_eq!(fs::read(into.join("bin/run.sh")).unwrap(), b"hi");

        let bad = dir.path().join("bad.tar");
        let mut builder = tar::Builder::new(File::create(&bad).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_cksum();
        builder.append_link(&mut header, "escape", "/etc").unwrap();
        builder.finish().unwrap();
        drop(builder);
        let into = dir.path().join("out2");
        fs::create_dir(&into).unwrap();
        let err = unpack_safely(&bad, &into).unwrap_err().to_string();
        assert!(err.contains("only files and directories"), "{err}");
    }

    #[tokio::test]
    async fn commands_report_status_output_and_timeouts() {
        let env = Env::default().with("GREETING", "hello");
        let ran = run(
            "echo \"$GREETING\"; echo oops >&2; exit 3",
            &env,
            Duration::from_secs(5),
        )
        .await;
        assert!(!ran.ok);
        assert_eq!(ran.how, "exit status 3");
        assert_eq!(ran.stdout, "hello\n");
        assert!(ran.log.contains("oops"), "{}", ran.log);
        let ran = run("sleep 5", &env, Duration::from_millis(200)).await;
        assert!(!ran.ok);
        assert!(ran.how.starts_with("timed out"), "{}", ran.how);
        assert_eq!(
            expand(
                "write {payload} {slot}",
                Some(Path::new("/a b/it's")),
                Some("b")
            ),
            r"write '/a b/it'\''s' 'b'"
        );
    }
}
