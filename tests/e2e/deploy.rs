//! The files under deploy/ that no test here can run (Docker is not on this
//! machine, nor a cluster): every YAML file parses, the compose file's
//! services, health checks, dependencies and volumes refer to each other,
//! the Kubernetes objects probe /readyz and /healthz on declared ports with
//! real configuration keys, the systemd units carry their hardening, and the
//! Dockerfiles build a non-root image with a health check. Settings in them
//! go through the server's own `Settings::load`, so a key or value the server
//! would refuse fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use drover_server::config::{KEYS, Settings};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
    out.sort();
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {y:?}"))
}

fn map_keys(y: &Yaml) -> Vec<String> {
    y.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// The value of a compose `${VAR:-default}` / `${VAR:?message}` / `$$`
/// string as `docker compose` would see it with VAR unset, except that
/// required variables take `value_for_required`.
fn interpolate(value: &str, value_for_required: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').expect("an unclosed ${ in compose.yaml");
            let expr = &inner[..end];
            if let Some((_, default)) = expr.split_once(":-") {
                out.push_str(default);
            } else if expr.contains(":?") {
                out.push_str(value_for_required);
            } else {
                panic!("compose.yaml uses ${{{expr}}} without a default or a required marker");
            }
            rest = &inner[end + 1..];
        } else {
            panic!("compose.yaml has a bare $ in {value:?}; write $$ for a literal one");
        }
    }
    out.push_str(rest);
    out
}

/// Feeds `DROVER_*` variables through the server's own configuration loader.
fn assert_server_accepts(where_: &str, vars: &BTreeMap<String, String>) {
    for name in vars.keys() {
        let key = name
            .strip_prefix("DROVER_")
            .unwrap_or_else(|| panic!("{where_}: {name} is not a DROVER_* variable"))
            .to_ascii_lowercase();
        assert!(
            KEYS.contains(&key.as_str()),
            "{where_}: {name} is not a server setting; known settings are {}",
            KEYS.join(", ")
        );
    }
    let env = vars.iter().map(|(k, v)| (k.clone(), v.clone()));
    if let Err(e) = Settings::load(None, env) {
        panic!("{where_}: the server would refuse this configuration: {e}");
    }
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&deploy_dir(), &mut files);
    let yaml: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    assert!(
        yaml.len() >= 7,
        "expected the compose file and the Kubernetes manifests, found {yaml:?}"
    );
    for path in yaml {
        assert!(
            !yaml_docs(path).is_empty(),
            "{} holds no YAML document",
            path.display()
        );
    }
}

#[test]
fn compose_services_health_checks_dependencies_and_volumes_agree() {
    let compose_dir = deploy_dir().join("compose");
    let docs = yaml_docs(&compose_dir.join("compose.yaml"));
    let compose = &docs[0];
    let services = compose["services"]
        .as_hash()
        .expect("compose.yaml has services");
    let names: BTreeSet<String> = map_keys(&compose["services"]).into_iter().collect();
    for wanted in ["drover", "postgres", "mosquitto", "agent"] {
        assert!(
            names.contains(wanted),
            "compose.yaml lacks the {wanted} service"
        );
    }
    let declared_volumes: BTreeSet<String> = map_keys(&compose["volumes"]).into_iter().collect();
    let mut used_volumes = BTreeSet::new();
    let one_shot = |name: &str| compose["services"][name]["restart"].as_str() == Some("no");

    for (name, service) in services {
        let name = text(name, "a service name");
        assert!(
            !service["image"].is_badvalue() || !service["build"].is_badvalue(),
            "service {name} has neither image nor build"
        );
        if !service["build"].is_badvalue() {
            let context = compose_dir.join(text(&service["build"]["context"], "build.context"));
            let dockerfile =
                context.join(text(&service["build"]["dockerfile"], "build.dockerfile"));
            assert!(
                dockerfile.is_file(),
                "service {name} builds from {}, which does not exist",
                dockerfile.display()
            );
        }
        if !one_shot(name) {
            let test = &service["healthcheck"]["test"];
            assert!(
                !list(test).is_empty(),
                "service {name} runs for good and has no healthcheck test"
            );
        }
        for (dep, how) in service["depends_on"].as_hash().into_iter().flatten() {
            let dep = text(dep, "a depends_on entry");
            assert!(
                names.contains(dep),
                "service {name} depends on {dep}, which is not a service"
            );
            let condition = text(&how["condition"], "depends_on.condition");
            match condition {
                "service_healthy" => assert!(
                    !compose["services"][dep]["healthcheck"].is_badvalue(),
                    "service {name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                ),
                "service_completed_successfully" => assert!(
                    one_shot(dep),
                    "service {name} waits for {dep} to complete, but {dep} restarts"
                ),
                other => panic!("service {name} depends on {dep} with condition {other}"),
            }
        }
        for mount in list(&service["volumes"]) {
            let mount = text(mount, "a volume mount");
            let source = mount.split(':').next().expect("split yields one part");
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    compose_dir.join(source).exists(),
                    "service {name} mounts {source}, which does not exist beside compose.yaml"
                );
            } else {
                assert!(
                    declared_volumes.contains(source),
                    "service {name} mounts the volume {source}, which the top-level volumes do not declare"
                );
                used_volumes.insert(source.to_string());
            }
        }
        // The server's settings, with the defaults compose would put in.
        let mut drover_vars = BTreeMap::new();
        for (key, value) in service["environment"].as_hash().into_iter().flatten() {
            let key = text(key, "an environment name");
            if key.starts_with("DROVER_") && !key.starts_with("DROVER_AGENT_") {
                let value = interpolate(text(value, key), "compose-test-password");
                drover_vars.insert(key.to_string(), value);
            }
        }
        if !drover_vars.is_empty() {
            assert_server_accepts(&format!("compose.yaml service {name}"), &drover_vars);
        }
    }
    assert_eq!(
        used_volumes, declared_volumes,
        "every named volume is used and every used one declared"
    );

    let drover = &compose["services"]["drover"];
    let health = list(&drover["healthcheck"]["test"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        health.contains("/healthz"),
        "the server's healthcheck probes /healthz: {health}"
    );
    let env = &drover["environment"];
    assert!(
        text(&env["DROVER_DATABASE_URL"], "DROVER_DATABASE_URL").starts_with("postgres://"),
        "the compose server runs on PostgreSQL"
    );
    let mqtt = text(&env["DROVER_MQTT_URL"], "DROVER_MQTT_URL");
    assert!(
        mqtt.starts_with("mqtts://mosquitto:"),
        "the compose server uses the mosquitto service: {mqtt}"
    );
    let hostnames = interpolate(text(&env["DROVER_PUBLIC_HOSTNAMES"], "names"), "");
    for name in ["drover", "mosquitto"] {
        assert!(
            hostnames.split(',').any(|h| h == name),
            "the server certificate, which Mosquitto presents too, must name {name}: {hostnames}"
        );
    }

    // The broker runs the shipped deploy/mosquitto configuration; the
    // entrypoint rewrites these lines and fails when one is missing.
    let broker_mounts: Vec<_> = list(&compose["services"]["mosquitto"]["volumes"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        broker_mounts.iter().any(|m| m.starts_with("../mosquitto:")),
        "the mosquitto service mounts deploy/mosquitto: {broker_mounts:?}"
    );
    let stock = read(&deploy_dir().join("mosquitto/mosquitto.conf"));
    let entrypoint = read(&compose_dir.join("mosquitto-entrypoint.sh"));
    for line in [
        "listener 8884 127.0.0.1",
        "log_dest file ",
        "persistence_location ",
        "max_queued_messages 0",
        "max_queued_bytes 0",
    ] {
        assert!(
            stock.lines().any(|l| l.starts_with(line)),
            "deploy/mosquitto/mosquitto.conf has no `{line}` line"
        );
        assert!(
            entrypoint.contains(&format!("^{line}")),
            "mosquitto-entrypoint.sh does not check for `{line}`"
        );
    }
}

/// Kubernetes objects by kind and name, from every manifest in the folder.
fn kubernetes_objects() -> Vec<(PathBuf, Yaml)> {
    let dir = deploy_dir().join("kubernetes");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let mut objects = Vec::new();
    for path in files {
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        for doc in yaml_docs(&path) {
            objects.push((path.clone(), doc));
        }
    }
    objects
}

fn kind_of(y: &Yaml) -> &str {
    y["kind"].as_str().unwrap_or("")
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    let selector = selector.as_hash().expect("a selector is a map");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels[text(k, "a label")] == *v)
}

#[test]
fn kubernetes_manifests_run_two_probed_non_root_replicas_on_real_settings() {
    let dir = deploy_dir().join("kubernetes");
    let objects = kubernetes_objects();
    for (path, o) in &objects {
        for field in ["apiVersion", "kind"] {
            assert!(
                o[field].as_str().is_some_and(|s| !s.is_empty()),
                "an object in {} has no {field}",
                path.display()
            );
        }
        assert!(
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "a {} in {} has no metadata.name",
            kind_of(o),
            path.display()
        );
    }

    // kustomization.yaml lists exactly the manifests beside it.
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let listed: BTreeSet<String> = list(&kustomization["resources"])
        .iter()
        .map(|r| text(r, "a resource").to_string())
        .collect();
    let present: BTreeSet<String> = objects
        .iter()
        .map(|(p, _)| {
            p.file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");

    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .map(|(_, o)| o)
            .find(|o| kind_of(o) == kind && o["metadata"]["name"].as_str() == Some(name))
    };
    let workloads: Vec<&Yaml> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| matches!(kind_of(o), "Deployment" | "StatefulSet"))
        .collect();
    assert_eq!(workloads.len(), 1, "one server workload");
    let workload = workloads[0];
    let replicas = workload["spec"]["replicas"].as_i64().unwrap_or(1);
    assert!(
        replicas >= 2,
        "the server runs at least 2 replicas, not {replicas}"
    );
    let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
    assert!(
        labels_match(&workload["spec"]["selector"]["matchLabels"], pod_labels),
        "the workload's selector matches its pods"
    );
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(
        pod["enableServiceLinks"].as_bool(),
        Some(false),
        "service links would put DROVER_SERVICE_HOST and the like into the environment, which the server refuses"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap_or(0);
    assert!(uid > 0, "the pods run as a non-root uid, not {uid}");

    let containers: Vec<&Yaml> = list(&pod["containers"])
        .iter()
        .chain(list(&pod["initContainers"]))
        .collect();
    for c in &containers {
        let name = text(&c["name"], "a container name");
        let sc = &c["securityContext"];
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "container {name}: read-only root file system"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "container {name}: no privilege escalation"
        );
        assert!(
            list(&sc["capabilities"]["drop"])
                .iter()
                .any(|c| c.as_str() == Some("ALL")),
            "container {name}: drops every capability"
        );
        assert!(
            !c["resources"]["requests"].is_badvalue() && !c["resources"]["limits"].is_badvalue(),
            "container {name}: resource requests and limits"
        );
    }

    let server = list(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("drover"))
        .expect("a container named drover");
    let ports: BTreeMap<String, i64> = list(&server["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["containerPort"].as_i64().expect("containerPort"),
            )
        })
        .collect();
    let port_of = |port: &Yaml| -> i64 {
        match port {
            Yaml::Integer(n) => {
                assert!(ports.values().any(|p| p == n), "port {n} is not declared");
                *n
            }
            Yaml::String(name) => *ports
                .get(name)
                .unwrap_or_else(|| panic!("port {name} is not declared by the container")),
            other => panic!("a port is {other:?}"),
        }
    };
    let probe = |which: &str| -> (String, i64) {
        let get = &server[which]["httpGet"];
        (text(&get["path"], which).to_string(), port_of(&get["port"]))
    };
    let (ready_path, ready_port) = probe("readinessProbe");
    let (live_path, live_port) = probe("livenessProbe");
    assert_eq!(ready_path, "/readyz", "readiness asks /readyz");
    assert_eq!(live_path, "/healthz", "liveness asks /healthz");
    if !server["startupProbe"].is_badvalue() {
        let (start_path, start_port) = probe("startupProbe");
        assert_eq!(start_path, "/healthz", "the startup probe asks /healthz");
        assert_eq!(start_port, live_port, "startup and liveness probe one port");
    }

    // The settings the pods start with: the ConfigMap and Secret they load.
    let mut vars = BTreeMap::new();
    for source in list(&server["envFrom"]) {
        let (kind, name, data) = if !source["configMapRef"].is_badvalue() {
            let name = text(&source["configMapRef"]["name"], "configMapRef");
            ("ConfigMap", name, "data")
        } else {
            let name = text(&source["secretRef"]["name"], "secretRef");
            ("Secret", name, "stringData")
        };
        let object = find(kind, name).unwrap_or_else(|| {
            panic!("the pods load the {kind} {name}, which is not in the manifests")
        });
        for (key, value) in object[data].as_hash().into_iter().flatten() {
            let key = text(key, "a key");
            if kind == "Secret" && key.starts_with("AWS_") {
                continue;
            }
            vars.insert(key.to_string(), text(value, key).to_string());
        }
    }
    assert!(
        vars.get("DROVER_DATABASE_URL")
            .is_some_and(|u| u.starts_with("postgres://")),
        "replicas share a PostgreSQL store"
    );
    assert!(
        vars.contains_key("DROVER_MQTT_URL"),
        "replicas share an external broker"
    );
    assert!(
        vars.get("DROVER_BLOB_URL")
            .is_some_and(|u| u.starts_with("s3://")),
        "replicas share a blob store"
    );
    assert_server_accepts("deploy/kubernetes ConfigMap and Secret", &vars);
    let http_port: i64 = vars
        .get("DROVER_HTTP_LISTEN")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("DROVER_HTTP_LISTEN with a port");
    assert_eq!(ready_port, http_port, "readiness probes the HTTP listener");
    assert_eq!(live_port, http_port, "liveness probes the HTTP listener");
    let device_port: i64 = vars
        .get("DROVER_DEVICE_LISTEN")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("DROVER_DEVICE_LISTEN with a port");
    assert!(
        ports.values().any(|p| *p == device_port),
        "the container declares the device API's port {device_port}"
    );

    // Services and the disruption budget select the server's pods, on ports it declares.
    let services: Vec<&Yaml> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| kind_of(o) == "Service")
        .collect();
    assert!(!services.is_empty(), "a Service");
    for s in services {
        let name = text(&s["metadata"]["name"], "a Service name");
        assert!(
            labels_match(&s["spec"]["selector"], pod_labels),
            "Service {name} selects the server's pods"
        );
        for p in list(&s["spec"]["ports"]) {
            port_of(&p["targetPort"]);
        }
    }
    let pdb = objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| kind_of(o) == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let min_available = pdb["spec"]["minAvailable"].as_i64().unwrap_or(0);
    assert!(
        (1..replicas).contains(&min_available),
        "the budget keeps a replica up and still lets a node drain: minAvailable {min_available} of {replicas}"
    );
}

/// A systemd unit: section → key → every value given (keys may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(path: &Path) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut logical = String::new();
    for (n, raw) in read(path).lines().enumerate() {
        let line = raw.trim_end();
        if let Some(start) = line.strip_suffix('\\') {
            logical.push_str(start);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not KEY=VALUE: {line}", path.display(), n + 1));
        let section = section
            .clone()
            .unwrap_or_else(|| panic!("{}:{}: a key before any section", path.display(), n + 1));
        unit.entry(section)
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn one<'a>(unit: &'a Unit, section: &str, key: &str, file: &str) -> &'a str {
    unit.get(section)
        .and_then(|s| s.get(key))
        .and_then(|v| v.last())
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{file}: [{section}] has no {key}="))
}

fn words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .into_iter()
        .flatten()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|w| w.trim_start_matches('-').to_string())
        })
        .collect()
}

fn assert_hardened(unit: &Unit, file: &str, state_dir: &str) {
    for section in unit.keys() {
        assert!(
            ["Unit", "Service", "Install"].contains(&section.as_str()),
            "{file}: unexpected section [{section}]"
        );
    }
    // Keys systemd ignores (with only a warning) in the wrong section.
    for key in [
        "StartLimitIntervalSec",
        "StartLimitBurst",
        "Description",
        "After",
    ] {
        assert!(
            !unit["Service"].contains_key(key),
            "{file}: {key}= belongs in [Unit]; systemd ignores it in [Service]"
        );
    }
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(unit, "Service", key, file), want, "{file}: {key}");
    }
    let restart = one(unit, "Service", "Restart", file);
    assert!(
        ["on-failure", "always", "on-abnormal"].contains(&restart),
        "{file}: Restart={restart}"
    );
    assert!(
        words(unit, "Service", "ReadWritePaths")
            .iter()
            .any(|p| p == state_dir),
        "{file}: ReadWritePaths includes {state_dir}"
    );
    let state = one(unit, "Service", "StateDirectory", file);
    assert_eq!(
        format!("/var/lib/{state}"),
        state_dir,
        "{file}: StateDirectory"
    );
    assert!(
        unit["Install"].contains_key("WantedBy"),
        "{file}: [Install] WantedBy="
    );
}

#[test]
fn systemd_units_are_hardened_and_sized_for_ten_thousand_devices() {
    let dir = deploy_dir().join("systemd");
    let server = parse_unit(&dir.join("drover.service"));
    assert_hardened(&server, "drover.service", "/var/lib/drover");
    let user = one(&server, "Service", "User", "drover.service");
    assert!(
        user != "root" && user != "0",
        "the server runs as its own user"
    );
    let nofile: u64 = one(&server, "Service", "LimitNOFILE", "drover.service")
        .split(':')
        .next_back()
        .and_then(|n| n.parse().ok())
        .expect("a numeric LimitNOFILE");
    // One descriptor per device on the gateway (docs/BENCHMARKS.md), plus
    // the device API, dashboards and the database.
    assert!(
        nofile >= 20_000,
        "LimitNOFILE={nofile} is too low for 10,000 devices"
    );
    assert_eq!(
        one(
            &server,
            "Service",
            "CapabilityBoundingSet",
            "drover.service"
        ),
        "",
        "the server needs no capabilities"
    );
    // The configuration file the unit names, through the server's loader.
    let exec = one(&server, "Service", "ExecStart", "drover.service");
    assert!(exec.contains("/etc/drover/drover.toml"), "{exec}");
    if let Err(e) = Settings::load(Some(&dir.join("drover.toml")), Vec::new()) {
        panic!("deploy/systemd/drover.toml: {e}");
    }
    let data_dir = one(&server, "Service", "Environment", "drover.service");
    assert_eq!(data_dir, "DROVER_DATA_DIR=/var/lib/drover");

    let agent = parse_unit(&dir.join("drover-agent.service"));
    assert_hardened(&agent, "drover-agent.service", "/var/lib/drover-agent");

    let path_unit = parse_unit(&dir.join("drover-mosquitto-crl.path"));
    assert_eq!(
        one(
            &path_unit,
            "Path",
            "PathChanged",
            "drover-mosquitto-crl.path"
        ),
        "/var/lib/drover/pki/crl.pem"
    );
    let unit = one(&path_unit, "Path", "Unit", "drover-mosquitto-crl.path");
    assert!(
        dir.join(unit).is_file(),
        "{unit} is shipped beside the path unit"
    );
}

/// The instructions of a Dockerfile's last stage, continuation lines joined.
fn final_stage(path: &Path) -> (usize, Vec<(String, String)>) {
    let mut stages = 0;
    let mut instructions = Vec::new();
    let mut logical = String::new();
    for raw in read(path).lines() {
        let line = raw.trim();
        if line.starts_with('#') && logical.is_empty() {
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            logical.push_str(start);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let line = std::mem::take(&mut logical);
        let Some((op, args)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stages += 1;
            instructions.clear();
        }
        instructions.push((op, args.trim().to_string()));
    }
    (stages, instructions)
}

fn args_of<'a>(stage: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn dockerfiles_build_small_non_root_images_with_health_checks() {
    let dir = deploy_dir().join("docker");
    for (file, exposes, volume) in [
        (
            "Dockerfile.server",
            &["8080", "8443", "8883"][..],
            "/var/lib/drover",
        ),
        ("Dockerfile.agent", &[][..], "/var/lib/drover-agent"),
    ] {
        let (stages, last) = final_stage(&dir.join(file));
        assert!(stages >= 2, "{file}: a builder stage and a final stage");
        let from = args_of(&last, "FROM");
        assert!(
            from.iter().all(|f| !f.contains("rust")),
            "{file}: the final image is not the Rust toolchain: {from:?}"
        );
        let users = args_of(&last, "USER");
        let user = users.last().unwrap_or_else(|| panic!("{file}: no USER"));
        let name = user.split(':').next().unwrap_or("");
        assert!(
            !name.is_empty() && name != "root" && name != "0",
            "{file}: runs as {user}"
        );
        let health = args_of(&last, "HEALTHCHECK").join(" ");
        assert!(health.contains("CMD"), "{file}: a HEALTHCHECK");
        let exposed = args_of(&last, "EXPOSE").join(" ");
        for port in exposes {
            assert!(
                exposed.split_whitespace().any(|p| p == *port),
                "{file}: EXPOSE {port}"
            );
        }
        assert!(
            args_of(&last, "VOLUME").iter().any(|v| v.contains(volume)),
            "{file}: VOLUME {volume}"
        );
        // Every DROVER_* default the image sets is a real server setting.
        let mut vars = BTreeMap::new();
        for env in args_of(&last, "ENV") {
            for pair in env.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                if k.starts_with("DROVER_") && !k.starts_with("DROVER_AGENT_") {
                    vars.insert(k.to_string(), v.to_string());
                }
            }
        }
        if file == "Dockerfile.server" {
            assert!(health.contains("/healthz"), "{file}: probes /healthz");
            assert_server_accepts(file, &vars);
            let http = vars.get("DROVER_HTTP_LISTEN").expect("DROVER_HTTP_LISTEN");
            let port = http.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
            assert!(
                health.contains(&format!(":{port}/healthz")),
                "{file}: the health check asks the port the server listens on ({port})"
            );
        }
    }
    let ignore = read(&deploy_dir().join("../.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore keeps target/ out of the build context"
    );
}
