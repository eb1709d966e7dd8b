//! Every overlay: typed parse, and the policies a zero-loss rollout and a least-privilege
//! deployment depend on.

use std::{collections::BTreeMap, os::unix::process::CommandExt, path::Path, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Probe, Service},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::de::DeserializeOwned;

use crate::{
    render::{
        OVERLAYS, Object, env_file, find, help, of_kind, overlay, render, repo, scratch_copy,
    },
    typed::{self, HttpRoute, Method, PathMatchType, ServiceMonitor},
};

/// Herald's own Deployments (the binary each runs is its `command`).
const HERALD: &[&str] = &["herald-gateway", "herald-ingest"];

/// Seconds `terminationGracePeriodSeconds` must exceed preStop delay + drain deadline by: the
/// process' own exit, and the kubelet's slack.
const GRACE_MARGIN: Duration = Duration::from_secs(10);

fn typed<T: DeserializeOwned>(object: &Object) -> T {
    serde_json::from_value(object.value.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", object.kind, object.name))
}

fn deployment(objects: &[Object], name: &str) -> Deployment {
    typed(find(objects, "Deployment", name))
}

fn template(d: &Deployment) -> &PodTemplateSpec {
    &d.spec.template
}

fn pod(d: &Deployment) -> &PodSpec {
    template(d).spec.as_ref().expect("pod spec")
}

fn container(d: &Deployment) -> &Container {
    &pod(d).containers[0]
}

/// Every pod template of the workloads in `objects`, with its owner's name.
fn pod_templates(objects: &[Object]) -> Vec<(String, PodTemplateSpec)> {
    let mut out = Vec::new();
    for o in objects {
        match o.kind.as_str() {
            "Deployment" => {
                let d: Deployment = typed(o);
                out.push((o.name.clone(), template(&d).clone()));
            }
            "StatefulSet" => {
                let s: k8s_openapi::api::apps::v1::StatefulSet = typed(o);
                out.push((o.name.clone(), s.spec.template));
            }
            _ => {}
        }
    }
    out
}

/// Whether `selector` (matchLabels and matchExpressions with `In`) selects `labels`.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("selector operator {other}"),
        }
    });
    labels_ok && expressions_ok
}

/// The workloads among `templates` whose pods `selector` selects: their names and templates.
fn selected<'a>(
    templates: &'a [(String, PodTemplateSpec)],
    selector: &LabelSelector,
) -> Vec<(&'a str, &'a PodTemplateSpec)> {
    templates
        .iter()
        .filter(|(_, t)| selects(selector, &pod_labels(t)))
        .map(|(n, t)| (n.as_str(), t))
        .collect()
}

/// Asserts every pod in `pods` has a container port named `port`.
fn all_have_port(pods: &[(&str, &PodTemplateSpec)], port: &str) {
    for (_, t) in pods {
        named_port(&t.spec.as_ref().unwrap().containers[0], port);
    }
}

fn pod_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The container's environment as the kubelet assembles it: its ConfigMaps (`envFrom`, in
/// order), then `env` literals.
fn environment(objects: &[Object], c: &Container) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in c.env_from.iter().flatten() {
        let name = &source.config_map_ref.as_ref().expect("configMapRef").name;
        let map: ConfigMap = typed(find(objects, "ConfigMap", name));
        env.extend(map.data.unwrap_or_default());
    }
    for var in c.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
        }
    }
    env
}

fn duration(env: &BTreeMap<String, String>, key: &str) -> Duration {
    let value = env.get(key).unwrap_or_else(|| panic!("{key} is not set"));
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("{key}={value}: {e}"))
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit(':').next().unwrap().parse().expect("a port")
}

fn named_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container {} has no port {name}", c.name))
        .container_port
}

fn http_get(probe: &Probe) -> (String, String) {
    let get = probe.http_get.as_ref().expect("an httpGet probe");
    let port = match &get.port {
        IntOrString::String(s) => s.clone(),
        IntOrString::Int(i) => i.to_string(),
    };
    (get.path.clone().expect("a path"), port)
}

#[test]
fn every_overlay_renders_into_typed_objects() {
    for name in OVERLAYS {
        let objects = overlay(name);
        let failures: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                typed::check(o)
                    .err()
                    .map(|e| format!("{} {}: {e}", o.kind, o.name))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "overlay {name}:\n{}",
            failures.join("\n")
        );
        for kind in [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ] {
            for d in HERALD {
                find(&objects, kind, d);
            }
        }
        find(&objects, "ServiceAccount", "herald");
    }
}

#[test]
fn herald_pods_roll_without_loss() {
    for name in OVERLAYS {
        let objects = overlay(name);
        for &d in HERALD {
            let what = format!("overlay {name}, {d}");
            let dep = deployment(&objects, d);
            let strategy = dep.spec.strategy.as_ref().expect("strategy");
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{what}");
            let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
            assert!(
                matches!(rolling.max_unavailable.as_ref(), Some(IntOrString::Int(0)))
                    || matches!(rolling.max_unavailable.as_ref(), Some(IntOrString::String(s)) if s == "0%"),
                "{what}: maxUnavailable must be 0"
            );
            assert!(
                !matches!(rolling.max_surge.as_ref(), Some(IntOrString::Int(0)) | None),
                "{what}: maxSurge must let a new pod start first"
            );

            let c = container(&dep);
            let env = environment(&objects, c);
            let admin = named_port(c, "admin");
            assert_eq!(
                admin,
                port_of(env.get("HERALD_ADMIN_LISTEN").expect("HERALD_ADMIN_LISTEN")),
                "{what}: the admin containerPort is not HERALD_ADMIN_LISTEN's"
            );
            assert_eq!(
                named_port(c, "http"),
                port_of(env.get("HERALD_LISTEN").expect("HERALD_LISTEN")),
                "{what}: the http containerPort is not HERALD_LISTEN's"
            );

            // Readiness and liveness: both present, on separate endpoints of the admin port;
            // readiness fails fast (within the preStop delay, so the endpoint is gone before
            // SIGTERM), liveness slowly.
            let readiness = c.readiness_probe.as_ref().expect("readinessProbe");
            let liveness = c.liveness_probe.as_ref().expect("livenessProbe");
            let (ready_path, ready_port) = http_get(readiness);
            let (live_path, live_port) = http_get(liveness);
            assert_eq!(
                (ready_path.as_str(), ready_port.as_str()),
                ("/readyz", "admin"),
                "{what}"
            );
            assert_eq!(
                (live_path.as_str(), live_port.as_str()),
                ("/healthz", "admin"),
                "{what}"
            );
            assert_ne!(
                ready_path, live_path,
                "{what}: the same endpoint for both probes"
            );
            let prestop = duration(&env, "HERALD_PRESTOP_DELAY");
            let window = |p: &Probe| {
                Duration::from_secs(
                    (p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3)) as u64,
                )
            };
            assert!(
                window(readiness) < prestop,
                "{what}: readiness notices the withdrawal after {:?}, not within the preStop \
                 delay {prestop:?}",
                window(readiness)
            );
            assert!(
                window(liveness) >= Duration::from_secs(30),
                "{what}: liveness restarts the pod after only {:?}",
                window(liveness)
            );
            assert!(c.startup_probe.is_some(), "{what}: no startupProbe");

            // preStop withdraws the pod; the grace period covers it and the whole drain.
            let hook = c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .unwrap_or_else(|| panic!("{what}: no preStop hook"));
            let get = hook.http_get.as_ref().expect("preStop httpGet");
            assert_eq!(get.path.as_deref(), Some("/prestop"), "{what}");
            assert_eq!(get.port, IntOrString::String("admin".into()), "{what}");
            let deadline = duration(&env, "HERALD_DRAIN_DEADLINE");
            if let Some(jitter) = env.get("HERALD_DRAIN_JITTER") {
                assert!(
                    humantime::parse_duration(jitter).unwrap() <= deadline,
                    "{what}: the drain jitter outlasts the deadline"
                );
            }
            let grace = Duration::from_secs(
                pod(&dep).termination_grace_period_seconds.expect("grace") as u64,
            );
            assert!(
                grace >= prestop + deadline + GRACE_MARGIN,
                "{what}: terminationGracePeriodSeconds {grace:?} < preStop {prestop:?} + drain \
                 deadline {deadline:?} + {GRACE_MARGIN:?}"
            );
        }
    }
}

/// Every Herald pod would start: it listens beyond loopback, so the binary refuses to run without
/// access control. Production verifies tokens with keys from a mounted Secret and allows no
/// anonymous publishing; the dev overlay opens everything explicitly, as a laptop demo.
#[test]
fn herald_pods_start_with_access_control() {
    const KEYS: &[&str] = &[
        "HERALD_AUTH_HMAC_KEY_FILE",
        "HERALD_AUTH_PUBLIC_KEY_FILE",
        "HERALD_AUTH_JWKS_FILE",
    ];
    for name in OVERLAYS {
        let objects = overlay(name);
        for &d in HERALD {
            let what = format!("overlay {name}, {d}");
            let dep = deployment(&objects, d);
            let c = container(&dep);
            let env = environment(&objects, c);
            let keys: Vec<&str> = KEYS
                .iter()
                .filter_map(|k| env.get(*k).map(String::as_str))
                .collect();
            let anonymous = env.contains_key("HERALD_ANONYMOUS_SUBSCRIBE")
                || env
                    .get("HERALD_ANONYMOUS_PUBLISH")
                    .is_some_and(|v| v == "true");
            assert!(keys.len() <= 1, "{what}: one source of keys, not {keys:?}");
            assert!(
                !keys.is_empty() || anonymous,
                "{what}: listens on {:?} with no access control; it would refuse to start",
                env.get("HERALD_LISTEN")
            );
            if let Some(file) = keys.first() {
                // The key file is in a read-only mount of a Secret.
                let dir = Path::new(file).parent().unwrap().to_str().unwrap();
                let mount = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| m.mount_path == dir)
                    .unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir}"));
                assert_eq!(mount.read_only, Some(true), "{what}");
                let volume = pod(&dep)
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)
                    .unwrap_or_else(|| panic!("{what}: no volume {}", mount.name));
                assert!(
                    volume.secret.is_some(),
                    "{what}: the keys must come from a Secret"
                );
            }
            if name.starts_with("prod") {
                assert!(!keys.is_empty(), "{what}: production verifies tokens");
                assert!(!anonymous, "{what}: production allows no anonymous access");
                if d == "herald-gateway" {
                    assert_eq!(
                        env.get("HERALD_DEMO_PAGES").map(String::as_str),
                        Some("false"),
                        "{what}: no demo pages in production"
                    );
                }
            }
        }
    }
}

#[test]
fn herald_pods_have_resources_least_privilege_and_spread() {
    for name in OVERLAYS {
        let objects = overlay(name);
        for &d in HERALD {
            let what = format!("overlay {name}, {d}");
            let dep = deployment(&objects, d);
            let spec = pod(&dep);
            let c = container(&dep);
            let resources = c.resources.as_ref().expect("resources");
            let requests = resources.requests.clone().unwrap_or_default();
            let limits = resources.limits.clone().unwrap_or_default();
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{what}: cpu and memory requests"
            );
            assert!(limits.contains_key("memory"), "{what}: a memory limit");
            assert_eq!(
                spec.service_account_name.as_deref(),
                Some("herald"),
                "{what}"
            );
            assert_eq!(spec.automount_service_account_token, Some(false), "{what}");
            let csc = c
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(csc.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(csc.read_only_root_filesystem, Some(true), "{what}");
            assert_eq!(
                csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()]),
                "{what}"
            );
            let keys: Vec<&str> = spec
                .topology_spread_constraints
                .iter()
                .flatten()
                .map(|t| t.topology_key.as_str())
                .collect();
            assert!(
                keys.contains(&"topology.kubernetes.io/zone"),
                "{what}: not spread across zones"
            );
            for t in spec.topology_spread_constraints.iter().flatten() {
                let selector = t.label_selector.as_ref().expect("labelSelector");
                assert!(
                    selects(selector, &pod_labels(template(&dep))),
                    "{what}: spread selector"
                );
            }
        }
        // No pod of any overlay runs as root; every image is pinned.
        for (owner, t) in pod_templates(&objects) {
            let spec = t.spec.as_ref().unwrap();
            let psc = spec.security_context.as_ref();
            for c in &spec.containers {
                let what = format!("overlay {name}, {owner}/{}", c.name);
                let csc = c.security_context.as_ref();
                let non_root = csc
                    .and_then(|s| s.run_as_non_root)
                    .or(psc.and_then(|s| s.run_as_non_root));
                let user = csc
                    .and_then(|s| s.run_as_user)
                    .or(psc.and_then(|s| s.run_as_user));
                assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
                assert_ne!(user, Some(0), "{what}: runs as root");
                let image = c.image.as_deref().expect("image");
                assert!(
                    image_is_pinned(image),
                    "{what}: image {image} is not pinned"
                );
            }
        }
    }
}

/// `name:tag` with a tag other than `latest`, or `name@sha256:…`.
pub(crate) fn image_is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap();
    match last.split_once(':') {
        Some((_, tag)) => !tag.is_empty() && tag != "latest",
        None => false,
    }
}

#[test]
fn image_pinning_is_recognised() {
    assert!(image_is_pinned("nats:2.15.1-alpine"));
    assert!(image_is_pinned(
        "registry.example.com:5000/herald/herald:0.1.0"
    ));
    assert!(image_is_pinned("herald@sha256:0123"));
    assert!(!image_is_pinned("registry.example.com:5000/herald/herald"));
    assert!(!image_is_pinned("mongo"));
    assert!(!image_is_pinned("mongo:latest"));
}

#[test]
fn disruption_budgets_autoscalers_and_services_match_their_pods() {
    for name in OVERLAYS {
        let objects = overlay(name);
        let templates = pod_templates(&objects);
        for o in of_kind(&objects, "PodDisruptionBudget") {
            let pdb: PodDisruptionBudget = typed(o);
            let spec = pdb.spec.expect("spec");
            let selector = spec.selector.expect("selector");
            let matched: Vec<&str> = selected(&templates, &selector)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(
                matched,
                [o.name.as_str()],
                "overlay {name}: PDB {} selects",
                o.name
            );
            assert!(
                matches!(spec.max_unavailable, Some(IntOrString::Int(n)) if n >= 1),
                "overlay {name}: PDB {} must let one pod go at a time (a drain is never blocked)",
                o.name
            );
        }
        for &d in HERALD {
            assert!(
                of_kind(&objects, "PodDisruptionBudget").any(|o| o.name == d),
                "overlay {name}: no PDB for {d}"
            );
        }
        for o in of_kind(&objects, "HorizontalPodAutoscaler") {
            let hpa: HorizontalPodAutoscaler = typed(o);
            let spec = hpa.spec;
            assert_eq!(spec.scale_target_ref.kind, "Deployment");
            find(&objects, "Deployment", &spec.scale_target_ref.name);
            assert!(
                spec.min_replicas.unwrap_or(1) >= 1
                    && spec.max_replicas > spec.min_replicas.unwrap_or(1),
                "overlay {name}: HPA {} bounds",
                o.name
            );
            let metrics = spec.metrics.unwrap_or_default();
            assert!(
                metrics
                    .iter()
                    .any(|m| m.resource.as_ref().is_some_and(|r| r.name == "cpu")),
                "overlay {name}: HPA {} does not scale on CPU",
                o.name
            );
        }
        // Every Service reaches pods, on ports those pods name.
        for o in of_kind(&objects, "Service") {
            let svc: Service = typed(o);
            let spec = svc.spec.expect("spec");
            let selector = LabelSelector {
                match_labels: spec.selector.clone(),
                ..Default::default()
            };
            let matched = selected(&templates, &selector);
            assert!(
                !matched.is_empty(),
                "overlay {name}: Service {} selects no pods",
                o.name
            );
            for port in spec.ports.iter().flatten() {
                if let Some(IntOrString::String(target)) = &port.target_port {
                    all_have_port(&matched, target);
                }
            }
        }
    }
    // Prod scales gateways on open connections too (served by prometheus-adapter), a metric the
    // gateway exports.
    let prod = overlay("prod");
    let hpa: HorizontalPodAutoscaler =
        typed(find(&prod, "HorizontalPodAutoscaler", "herald-gateway"));
    let pods_metric = hpa
        .spec
        .metrics
        .unwrap()
        .into_iter()
        .find_map(|m| m.pods)
        .expect("a Pods metric");
    assert_eq!(pods_metric.metric.name, "herald_connections_open");
    let adapter =
        std::fs::read_to_string(repo().join("k8s/external/prometheus-adapter.yaml")).unwrap();
    assert!(adapter.contains("herald_connections_open"));
}

/// Where a request lands, per the Ingress (ingress-nginx's rules: an Exact path first, then
/// the longest Prefix by path elements).
fn ingress_backend(ingress: &Ingress, path: &str) -> Option<(String, String)> {
    let rule = &ingress.spec.as_ref()?.rules.as_ref()?[0];
    let paths = &rule.http.as_ref()?.paths;
    let elements = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let best = paths
        .iter()
        .filter_map(|p| {
            let want = p.path.as_deref().unwrap_or("/");
            match p.path_type.as_str() {
                "Exact" if want == path => Some((usize::MAX, p)),
                "Prefix" if elements(path).starts_with(&elements(want)) => {
                    Some((elements(want).len(), p))
                }
                _ => None,
            }
        })
        .max_by_key(|(rank, _)| *rank)?
        .1;
    let svc = best.backend.service.as_ref()?;
    let port = svc.port.as_ref()?.name.clone()?;
    Some((svc.name.clone(), port))
}

/// Where a request lands, per the HTTPRoute (Gateway API precedence: an Exact path, then the
/// longest prefix, then a method match).
fn route_backend(route: &HttpRoute, method: Method, path: &str) -> Option<String> {
    let mut best: Option<((u8, usize, u8), String)> = None;
    for rule in &route.spec.rules {
        for m in rule.matches.iter().flatten() {
            let path_rank = match &m.path {
                None => (0, 1),
                Some(p) => match p.kind {
                    PathMatchType::Exact if p.value == path => (1, p.value.len()),
                    PathMatchType::PathPrefix
                        if path == p.value.trim_end_matches('/')
                            || path.starts_with(&format!("{}/", p.value.trim_end_matches('/')))
                            || p.value == "/" =>
                    {
                        (0, p.value.len())
                    }
                    _ => continue,
                },
            };
            if m.method.is_some_and(|want| want != method) {
                continue;
            }
            let rank = (path_rank.0, path_rank.1, u8::from(m.method.is_some()));
            let backend = rule.backend_refs.as_ref()?[0].name.clone();
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, backend));
            }
        }
    }
    best.map(|(_, b)| b)
}

/// The public API and who must answer it (the ingest serves a topic's history too, so path-only
/// routing may send `/v1/topics/` wholly to it).
const ROUTES: &[(Method, &str, &[&str])] = &[
    (Method::Post, "/v1/topics/scores/events", &["herald-ingest"]),
    (Method::Post, "/v1/events", &["herald-ingest"]),
    (Method::Put, "/api/post-update", &["herald-ingest"]),
    (
        Method::Get,
        "/v1/topics/scores/events",
        &["herald-ingest", "herald-gateway"],
    ),
    (Method::Get, "/v1/stream", &["herald-gateway"]),
    (Method::Get, "/api/updates", &["herald-gateway"]),
    (Method::Get, "/", &["herald-gateway"]),
    (Method::Get, "/herald-lag.js", &["herald-gateway"]),
    (Method::Post, "/v1/telemetry/lag", &["herald-gateway"]),
];

#[test]
fn the_ingress_and_the_http_route_send_every_request_to_a_pool_that_serves_it() {
    for name in ["dev", "prod"] {
        let objects = overlay(name);
        let ingress: Ingress = typed(find(&objects, "Ingress", "herald"));
        for (method, path, want) in ROUTES {
            let (svc, port) = ingress_backend(&ingress, path)
                .unwrap_or_else(|| panic!("overlay {name}: {path} reaches no backend"));
            assert!(
                want.contains(&svc.as_str()),
                "overlay {name}: {method:?} {path} goes to {svc}, wants {want:?}"
            );
            assert_eq!(
                port, "http",
                "overlay {name}: {path} must not reach an admin port"
            );
        }
        let gateway = deployment(&objects, "herald-gateway");
        let heartbeat = duration(
            &environment(&objects, container(&gateway)),
            "HERALD_HEARTBEAT",
        );
        let notes = ingress.metadata.annotations.clone().unwrap_or_default();
        let note = |k: &str| {
            notes
                .get(&format!("nginx.ingress.kubernetes.io/{k}"))
                .cloned()
        };
        assert_eq!(
            note("proxy-buffering").as_deref(),
            Some("off"),
            "overlay {name}"
        );
        assert_eq!(
            note("proxy-http-version").as_deref(),
            Some("1.1"),
            "overlay {name}"
        );
        for timeout in ["proxy-read-timeout", "proxy-send-timeout"] {
            let secs: u64 = note(timeout).expect(timeout).parse().unwrap();
            assert!(
                Duration::from_secs(secs) >= 4 * heartbeat,
                "overlay {name}: {timeout} {secs}s is too close to the heartbeat {heartbeat:?}"
            );
        }
    }
    let objects = overlay("prod-gateway-api");
    assert!(
        of_kind(&objects, "Ingress").next().is_none(),
        "the Gateway API overlay keeps the Ingress"
    );
    let route: HttpRoute = typed(find(&objects, "HTTPRoute", "herald"));
    for (method, path, want) in ROUTES {
        let svc = route_backend(&route, *method, path)
            .unwrap_or_else(|| panic!("HTTPRoute: {method:?} {path} reaches no backend"));
        assert!(
            want.contains(&svc.as_str()),
            "HTTPRoute: {method:?} {path} goes to {svc}, wants {want:?}"
        );
    }
    for rule in &route.spec.rules {
        for backend in rule.backend_refs.iter().flatten() {
            let svc: Service = typed(find(&objects, "Service", &backend.name));
            assert!(
                svc.spec
                    .unwrap()
                    .ports
                    .unwrap()
                    .iter()
                    .any(|p| p.port == i32::from(backend.port)),
                "HTTPRoute: {} has no port {}",
                backend.name,
                backend.port
            );
        }
    }
}

#[test]
fn monitoring_and_network_policies_reach_the_right_ports() {
    for name in ["prod", "prod-gateway-api"] {
        let objects = overlay(name);
        let monitor = ServiceMonitor::parse(&find(&objects, "ServiceMonitor", "herald").value);
        let scraped: Vec<Service> = of_kind(&objects, "Service")
            .map(typed::<Service>)
            .filter(|s| {
                selects(
                    monitor.selector(),
                    &s.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let names: Vec<&str> = scraped
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            ["herald-gateway-admin", "herald-ingest-admin"],
            "overlay {name}: the ServiceMonitor must scrape the admin Services only"
        );
        for endpoint in monitor.endpoints() {
            assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
            for s in &scraped {
                assert!(
                    s.spec
                        .as_ref()
                        .unwrap()
                        .ports
                        .iter()
                        .flatten()
                        .any(|p| p.name.as_deref() == Some(&endpoint.port)),
                    "overlay {name}: {:?} has no port {}",
                    s.metadata.name,
                    endpoint.port
                );
            }
        }
    }
    for name in OVERLAYS {
        let objects = overlay(name);
        let templates = pod_templates(&objects);
        for o in of_kind(&objects, "NetworkPolicy") {
            let policy: NetworkPolicy = typed(o);
            let spec = policy.spec.expect("spec");
            let pods = selected(&templates, &spec.pod_selector.clone().unwrap_or_default());
            assert!(
                !pods.is_empty(),
                "overlay {name}: NetworkPolicy {} selects no pods",
                o.name
            );
            for rule in spec.ingress.iter().flatten() {
                for port in rule.ports.iter().flatten() {
                    if let Some(IntOrString::String(p)) = &port.port {
                        all_have_port(&pods, p);
                    }
                }
            }
        }
    }
}

#[test]
fn secrets_are_referenced_never_committed_in_prod() {
    let readme = std::fs::read_to_string(repo().join("k8s/README.md")).unwrap();
    for name in ["prod", "prod-gateway-api"] {
        let objects = overlay(name);
        // One Secret only: the token keys, generated from a file git ignores (the rendering here
        // carries the test document; prod_does_not_render_without_token_keys checks the rest).
        let secrets: Vec<&str> = of_kind(&objects, "Secret")
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(secrets, ["herald-auth"], "overlay {name} renders Secrets");
        let auth = find(&objects, "Secret", "herald-auth");
        assert_eq!(
            auth.value["data"]
                .as_object()
                .map(|d| d.keys().collect::<Vec<_>>()),
            Some(vec![&"jwks.json".to_owned()]),
            "overlay {name}"
        );
        for &d in HERALD {
            let dep = deployment(&objects, d);
            for var in container(&dep).env.iter().flatten() {
                if let Some(secret) = var
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                {
                    assert!(
                        readme.contains(&format!("create secret generic {}", secret.name)),
                        "k8s/README.md does not say how to create the Secret {}",
                        secret.name
                    );
                }
            }
        }
    }
}

#[test]
fn every_configured_setting_is_a_flag_of_the_binary_it_configures() {
    for name in OVERLAYS {
        let objects = overlay(name);
        for &d in HERALD {
            let dep = deployment(&objects, d);
            let c = container(&dep);
            let command = c.command.as_ref().expect("command");
            let binary = Path::new(&command[0])
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(binary, d, "overlay {name}: {d} runs {binary}");
            let flags = help(binary);
            let mut keys: Vec<String> = environment(&objects, c).into_keys().collect();
            keys.extend(c.env.iter().flatten().map(|v| v.name.clone()));
            for key in keys.iter().filter(|k| k.starts_with("HERALD_")) {
                // The image's health check reads its own variable.
                let (owner, known) = if key == "HERALD_PROBE_URL" {
                    (
                        "herald-probe",
                        help("herald-probe").contains("$HERALD_PROBE_URL"),
                    )
                } else {
                    // `[env: KEY=value]`, or `[env: KEY]` for a secret whose value help hides.
                    let shown = format!("env: {key}=");
                    let hidden = format!("env: {key}]");
                    (binary, flags.contains(&shown) || flags.contains(&hidden))
                };
                assert!(
                    known,
                    "overlay {name}: {d} sets {key}, which `{owner} --help` does not know"
                );
            }
        }
    }
}

fn templates_after(change: impl FnOnce(&Path)) -> (Vec<Object>, Vec<Object>) {
    let dir = scratch_copy();
    let before = render(&dir.path().join("k8s/overlays/dev"));
    change(dir.path());
    let after = render(&dir.path().join("k8s/overlays/dev"));
    (before, after)
}

fn same_template(before: &[Object], after: &[Object], d: &str) -> bool {
    template(&deployment(before, d)) == template(&deployment(after, d))
}

#[test]
fn a_config_change_rolls_exactly_the_pods_it_configures() {
    let edit = |root: &Path, file: &str, key: &str, value: &str| {
        let path = root.join("k8s/base/config").join(file);
        let mut lines = env_file(&path);
        let entry = lines.iter_mut().find(|(k, _)| k == key).expect(key);
        entry.1 = value.to_owned();
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(path, text).unwrap();
    };
    let (before, after) =
        templates_after(|root| edit(root, "gateway.env", "HERALD_HEARTBEAT", "10s"));
    assert!(
        !same_template(&before, &after, "herald-gateway"),
        "a gateway setting did not roll the gateways"
    );
    assert!(
        same_template(&before, &after, "herald-ingest"),
        "a gateway setting rolled the ingests"
    );

    let (before, after) =
        templates_after(|root| edit(root, "cluster.env", "HERALD_BACKEND_TIMEOUT", "4s"));
    for d in HERALD {
        assert!(
            !same_template(&before, &after, d),
            "a cluster setting did not roll {d}"
        );
    }
    // Nothing changed, nothing rolls.
    let (before, after) = templates_after(|_| {});
    for d in HERALD {
        assert!(same_template(&before, &after, d));
    }
}

/// The stream paths: what the Ingress herald-streams carries.
const STREAM_PATHS: &[&str] = &["/v1/stream", "/api/updates"];

#[test]
fn the_ingress_answers_a_stream_no_gateway_could_take_in_band() {
    for name in ["dev", "prod"] {
        let objects = overlay(name);
        let main: Ingress = typed(find(&objects, "Ingress", "herald"));
        let streams: Ingress = typed(find(&objects, "Ingress", "herald-streams"));
        let notes = |i: &Ingress| i.metadata.annotations.clone().unwrap_or_default();
        let (main_notes, stream_notes) = (notes(&main), notes(&streams));
        let key = |k: &str| format!("nginx.ingress.kubernetes.io/{k}");
        // The SSE settings of the main Ingress hold on the stream paths too.
        for k in [
            "proxy-buffering",
            "proxy-http-version",
            "proxy-read-timeout",
            "proxy-send-timeout",
            "proxy-next-upstream",
        ] {
            assert_eq!(
                stream_notes.get(&key(k)),
                main_notes.get(&key(k)),
                "overlay {name}: {k} differs between the Ingresses"
            );
        }
        let host = |i: &Ingress| {
            i.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
                .host
                .clone()
        };
        assert_eq!(host(&main), host(&streams), "overlay {name}: hosts differ");
        let paths: Vec<String> = streams.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
            .http
            .as_ref()
            .unwrap()
            .paths
            .iter()
            .map(|p| p.path.clone().unwrap())
            .collect();
        assert_eq!(paths, STREAM_PATHS, "overlay {name}: only the stream paths");
        for path in STREAM_PATHS {
            assert_eq!(
                ingress_backend(&streams, path),
                Some(("herald-gateway".into(), "http".into())),
                "overlay {name}: {path}"
            );
        }
        // The gateways' errors on streams go to the refusal backend; on the JSON endpoints a
        // 503 stays a 503 (a publisher retries it with its Idempotency-Key).
        let mut codes: Vec<&str> = stream_notes[&key("custom-http-errors")]
            .split(',')
            .collect();
        codes.sort_unstable();
        assert_eq!(codes, ["502", "503", "504"], "overlay {name}");
        assert!(
            !main_notes.contains_key(&key("custom-http-errors")),
            "overlay {name}: the JSON endpoints' errors are intercepted"
        );
        let backend = &stream_notes[&key("default-backend")];
        let svc: Service = typed(find(&objects, "Service", backend));
        let selector = svc.spec.unwrap().selector.unwrap();
        let refusal = deployment(&objects, "herald-refusal");
        let labels = template(&refusal).metadata.clone().unwrap().labels.unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "overlay {name}: Service {backend} does not select herald-refusal"
        );
        assert!(
            refusal.spec.replicas.unwrap_or(1) >= 2,
            "overlay {name}: one refusal pod is a single point of failure"
        );
        let config = pod(&refusal)
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.config_map.as_ref())
            .expect("the refusal configuration")
            .name
            .clone();
        let map: ConfigMap = typed(find(&objects, "ConfigMap", &config));
        let conf = map.data.unwrap()["refusal.conf"].clone();
        assert_refusal_answers(&conf);
    }
}

/// Runs Debian's nginx with the rendered refusal configuration and asks it what ingress-nginx
/// would: a stream request with `X-Code: 502`, and one with no code (no gateway endpoint at all).
fn assert_refusal_answers(conf: &str) {
    use std::io::{Read, Write};
    let dir = herald_tests::cluster::nginx_dir().unwrap();
    let port = herald_tests::cluster::free_port();
    assert!(conf.contains("listen 8080;"));
    let site = conf.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    std::fs::write(dir.path().join("refusal.conf"), site).unwrap();
    let main = format!(
        "pid {pid};\nerror_log stderr crit;\nevents {{}}\nhttp {{\n  access_log off;\n  include {site};\n}}\n",
        pid = dir.path().join("nginx.pid").display(),
        site = dir.path().join("refusal.conf").display(),
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let mut nginx = std::process::Command::new(herald_tests::cluster::nginx_bin())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-e", "stderr", "-g", "daemon off;"])
        // A group of its own, killed whole: a kill of the master alone leaves its workers behind.
        .process_group(0)
        .spawn()
        .expect("nginx");
    let group = Group(nginx.id());
    let get = |head: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let request = |code: &str| {
        format!(
            "GET /v1/stream?topic=scores HTTP/1.1\r\nHost: herald\r\nAccept: text/event-stream\r\n{code}Connection: close\r\n\r\n"
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut retries = std::collections::BTreeSet::new();
    for code in ["X-Code: 502\r\n", ""].into_iter().cycle().take(40) {
        let answer = loop {
            if let Some(a) = get(&request(code)) {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            head.to_lowercase()
                .contains("content-type: text/event-stream"),
            "{answer}"
        );
        // `retry: N`, then the named event with the code and the same delay.
        let retry: u64 = body
            .strip_prefix("retry: ")
            .and_then(|r| r.split('\n').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no retry first: {body}"));
        let data = body
            .split("event: herald.refused\ndata: ")
            .nth(1)
            .and_then(|d| d.split('\n').next())
            .unwrap_or_else(|| panic!("no herald.refused event: {body}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["code"], "unavailable");
        assert_eq!(data["retry_ms"], retry);
        assert!((2000..=4000).contains(&retry), "{retry}");
        retries.insert(retry);
    }
    assert!(retries.len() > 1, "the delay is not spread: {retries:?}");
    drop(group);
    let _ = nginx.wait();
}

/// A process group killed on drop, even when an assertion fails first.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        herald_tests::process::kill_group(self.0);
    }
}

#[test]
fn prod_does_not_render_without_token_keys() {
    let dir = scratch_copy();
    for name in ["prod", "prod-gateway-api"] {
        let out = std::process::Command::new(crate::render::tool("HERALD_KUBECTL", "kubectl"))
            .arg("kustomize")
            .arg(dir.path().join("k8s/overlays").join(name))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "overlay {name} rendered with no token keys"
        );
        assert!(
            stderr.contains("secrets/jwks.json"),
            "overlay {name}: the error does not name the missing file:\n{stderr}"
        );
    }
    // And git keeps the real document out of the repository.
    let out = std::process::Command::new("git")
        .args(["check-ignore", "-q", "k8s/overlays/prod/secrets/jwks.json"])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(
        out.success(),
        "git would commit k8s/overlays/prod/secrets/jwks.json"
    );
}
