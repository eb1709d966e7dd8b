//! `deploy/compose.yaml`: no Docker engine runs here, so the file is checked for what
//! `docker compose up` would trip over or silently get wrong: unpinned images, mounts of files
//! that do not exist, dependencies on services that do not exist, settings the binaries do not
//! know, addresses that name no service, and the pieces that must agree (nginx's template,
//! Prometheus' targets, Grafana's provisioning).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_yaml_ng::Value;

use crate::{
    manifests::image_is_pinned,
    render::{env_file, help, repo},
};

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    value.apply_merge().expect("merge keys");
    value
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The compose file's services by name.
fn services() -> BTreeMap<String, Value> {
    let compose = load(&deploy().join("compose.yaml"));
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (str_of(k), v.clone()))
        .collect()
}

/// A service's environment: its env files in order, then `environment`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for file in service["env_file"].as_sequence().into_iter().flatten() {
        env.extend(env_file(&deploy().join(str_of(file))));
    }
    if let Some(map) = service["environment"].as_mapping() {
        for (k, v) in map {
            env.insert(str_of(k), str_of(v));
        }
    }
    env
}

/// The host of `scheme://host:port/…` or `host:port`.
fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap();
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[test]
fn every_service_is_pinned_and_every_reference_resolves() {
    let services = services();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for (name, service) in &services {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no image"));
        assert!(
            image_is_pinned(image),
            "{name}: image {image} is not pinned"
        );
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = str_of(volume);
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                let path = deploy().join(source);
                assert!(
                    path.exists(),
                    "{name}: mounts {} which does not exist",
                    path.display()
                );
            }
        }
        for file in service["env_file"].as_sequence().into_iter().flatten() {
            let path = deploy().join(str_of(file));
            assert!(
                path.exists(),
                "{name}: env_file {} does not exist",
                path.display()
            );
        }
        let depends: Vec<String> = match &service["depends_on"] {
            Value::Sequence(list) => list.iter().map(str_of).collect(),
            Value::Mapping(map) => map.keys().map(str_of).collect(),
            Value::Null => Vec::new(),
            other => panic!("{name}: depends_on {other:?}"),
        };
        for d in depends {
            assert!(
                names.contains(d.as_str()),
                "{name} depends on {d}, which is no service"
            );
        }
        if let Some(build) = service.get("build") {
            let context = deploy().join(str_of(&build["context"]));
            assert!(
                context.join(str_of(&build["dockerfile"])).exists(),
                "{name}: build"
            );
        }
    }
    assert!(
        services["redis"]["profiles"]
            .as_sequence()
            .is_some_and(|p| p.iter().any(|v| v.as_str() == Some("redis"))),
        "Redis is optional: profile redis"
    );
    assert!(
        services["herald-gateway"]["deploy"]["replicas"]
            .as_u64()
            .unwrap_or(1)
            >= 2,
        "several gateways behind nginx"
    );
}

#[test]
fn herald_services_are_configured_with_settings_they_know_and_hosts_that_exist() {
    let services = services();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for name in ["herald-ingest", "herald-gateway"] {
        let service = &services[name];
        let entrypoint = str_of(&service["entrypoint"][0]);
        let binary = entrypoint
            .strip_prefix("/usr/local/bin/")
            .expect("/usr/local/bin");
        assert_eq!(binary, name);
        let flags = help(binary);
        let env = environment(service);
        for key in env.keys().filter(|k| k.starts_with("HERALD_")) {
            let known = if key == "HERALD_PROBE_URL" {
                help("herald-probe").contains("$HERALD_PROBE_URL")
            } else {
                // `[env: KEY=value]`, or `[env: KEY]` for a secret whose value help hides.
                flags.contains(&format!("env: {key}=")) || flags.contains(&format!("env: {key}]"))
            };
            assert!(known, "{name}: {key} is not a setting of {binary}");
        }
        for key in [
            "HERALD_NATS_URL",
            "HERALD_MONGODB_URI",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            let host = host_of(&env[key]);
            assert!(
                names.contains(host),
                "{name}: {key} names {host}, which is no service"
            );
        }
        // The health check probes the admin listener the service opens.
        let admin = host_of(&env["HERALD_PROBE_URL"]).to_owned();
        assert_eq!(admin, "127.0.0.1");
        let admin_port = env["HERALD_ADMIN_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        assert!(env["HERALD_PROBE_URL"].contains(&format!(":{admin_port}/readyz")));
    }
    let collector = environment(&services["otel-collector"]);
    let backend = host_of(&collector["TRACES_BACKEND_ENDPOINT"]);
    assert!(
        names.contains(backend),
        "the collector exports to {backend}, which is no service"
    );
}

#[test]
fn nginx_prometheus_and_grafana_agree_with_the_services() {
    let services = services();
    // nginx: every placeholder of the template is filled in.
    let template = std::fs::read_to_string(deploy().join("nginx/herald.conf")).unwrap();
    let command = services["nginx"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect::<Vec<_>>()
        .join(" ");
    let placeholders: BTreeSet<&str> = template
        .match_indices("{{")
        .map(|(i, _)| &template[i..i + template[i..].find("}}").unwrap() + 2])
        .collect();
    assert_eq!(placeholders.len(), 4, "{placeholders:?}");
    for p in placeholders {
        assert!(
            command.contains(&format!("s/{p}/")),
            "nginx's command leaves {p} in place"
        );
    }
    for upstream in ["herald-gateway:8080", "herald-ingest:8080"] {
        assert!(
            command.contains(upstream),
            "nginx does not balance over {upstream}"
        );
    }

    // Prometheus scrapes every Herald service on its admin port.
    let prometheus = load(&deploy().join("prometheus/prometheus.yml"));
    let sd = &prometheus["scrape_configs"][0]["dns_sd_configs"][0];
    let scraped: BTreeSet<String> = sd["names"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(
        scraped,
        BTreeSet::from(["herald-gateway".to_owned(), "herald-ingest".to_owned()])
    );
    for name in &scraped {
        let env = environment(&services[name.as_str()]);
        let admin_port = env["HERALD_ADMIN_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            str_of(&sd["port"]),
            admin_port,
            "{name}'s metrics are on its admin port"
        );
    }

    // Grafana: the data source is the compose file's Prometheus, the dashboard is mounted where
    // the provider reads.
    let datasource = load(&deploy().join("grafana/provisioning/datasources/prometheus.yaml"));
    let url = str_of(&datasource["datasources"][0]["url"]);
    assert_eq!(host_of(&url), "prometheus");
    let provider = load(&deploy().join("grafana/provisioning/dashboards/herald.yaml"));
    let folder = str_of(&provider["providers"][0]["options"]["path"]);
    let mounts: Vec<String> = services["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./grafana/herald-dashboard.json:")
                && m.contains(&format!(":{folder}/"))),
        "the dashboard is not mounted under {folder}: {mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./grafana/provisioning:/etc/grafana/provisioning"))
    );
}

/// `redis`'s command as the container's shell runs it (compose turns `$$` into `$`).
fn redis_command() -> String {
    let services = services();
    let command: Vec<String> = services["redis"]["command"]
        .as_sequence()
        .expect("redis: command")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(command[..2], ["sh", "-c"], "redis: command");
    command[2].replace("$$", "$")
}

#[test]
fn redis_needs_a_password_and_reads_it_from_the_environment() {
    let services = services();
    let redis = &services["redis"];
    assert_eq!(
        environment(redis).get("REDIS_PASSWORD").map(String::as_str),
        Some("${HERALD_REDIS_PASSWORD:-}"),
        "the password comes from the user's environment, never from the file"
    );
    for port in redis["ports"].as_sequence().into_iter().flatten() {
        assert!(str_of(port).starts_with("127.0.0.1:"), "redis: {port:?}");
    }
    // The command, run by sh with Debian's redis-server on a free port (a wrapper adds --port).
    let dir = tempfile::tempdir().unwrap();
    let port = herald_tests::cluster::free_port();
    let real =
        herald_tests::cluster::server_bin("HERALD_REDIS", PathBuf::from("/usr/bin/redis-server"));
    let wrapper = dir.path().join("redis-server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --port {port} --dir {}\n",
            real.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = |password: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(redis_command())
            .env("REDIS_PASSWORD", password)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    dir.path().display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run("").wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HERALD_REDIS_PASSWORD"),
        "the refusal does not say what to set"
    );

    let mut server = run("compose test password");
    let ask = |commands: &str| -> String {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "redis: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        };
        s.write_all(commands.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let anonymous = ask("PING\r\n");
    let authed = ask("AUTH \"compose test password\"\r\nPING\r\nCONFIG GET save\r\n");
    let _ = server.kill();
    let _ = server.wait();
    assert!(anonymous.starts_with("-NOAUTH"), "{anonymous}");
    assert!(authed.starts_with("+OK\r\n+PONG\r\n"), "{authed}");
    assert!(
        authed.ends_with("$4\r\nsave\r\n$0\r\n\r\n"),
        "persistence is on: {authed}"
    );
}
