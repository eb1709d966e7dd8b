//! Typed parsing of rendered objects. `k8s-openapi`'s structs ignore fields they do not know, so
//! each object is parsed, serialised back and compared with what was rendered: a field that did
//! not survive the round trip is one the API server would reject or silently drop (a typo, a
//! field at the wrong level). The two custom resources Herald uses get structs of their own that
//! refuse unknown fields.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::render::Object;

/// Parses `object` into its typed struct and back; the differences, if any.
pub(crate) fn check(object: &Object) -> Result<(), String> {
    let api = object.value["apiVersion"].as_str().unwrap_or_default();
    match (api, object.kind.as_str()) {
        ("v1", "Namespace") => round_trip::<Namespace>(&object.value),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(&object.value),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(&object.value),
        ("v1", "Secret") => round_trip::<Secret>(&object.value),
        ("v1", "Service") => round_trip::<Service>(&object.value),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(&object.value),
        ("apps/v1", "StatefulSet") => round_trip::<StatefulSet>(&object.value),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(&object.value),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            round_trip::<HorizontalPodAutoscaler>(&object.value)
        }
        ("networking.k8s.io/v1", "Ingress") => round_trip::<Ingress>(&object.value),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(&object.value),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            round_trip::<ServiceMonitor>(&object.value)
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => round_trip::<HttpRoute>(&object.value),
        (api, kind) => Err(format!(
            "{api} {kind} has no typed check: add it to tests/deploy/typed.rs"
        )),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), String> {
    let value = &unwrapped_base64(value);
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    diff("", &without_nulls(value), &back, &mut differences);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}

/// A Secret's `data` with kubectl's line-wrapped base64 joined (the API server's decoder skips
/// the line breaks; `k8s-openapi`'s does not).
fn unwrapped_base64(value: &Value) -> Value {
    let mut value = value.clone();
    if value["kind"] == "Secret"
        && let Some(Value::Object(data)) = value.get_mut("data")
    {
        for v in data.values_mut() {
            if let Value::String(s) = v {
                s.retain(|c| !c.is_ascii_whitespace());
            }
        }
    }
    value
}

/// The value with null members removed (an empty YAML key is the same as an absent one).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// What differs between the rendered and the round-tripped value, as JSON pointers.
pub(crate) fn diff(path: &str, rendered: &Value, back: &Value, out: &mut Vec<String>) {
    match (rendered, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}/{key}");
                match b.get(key) {
                    Some(other) => diff(&here, value, other, out),
                    None => out.push(format!("{here}: unknown field")),
                }
            }
            // Embedded objects (a StatefulSet's volumeClaimTemplates) come back with their
            // type written out, which the API server accepts either way.
            for key in b
                .keys()
                .filter(|k| !a.contains_key(*k) && !matches!(k.as_str(), "apiVersion" | "kind"))
            {
                out.push(format!("{path}/{key}: appeared in the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), x, y, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// `monitoring.coreos.com/v1` ServiceMonitor: the fields Herald's manifests may use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_label: Option<String>,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_names: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MonitorEndpoint {
    pub(crate) port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
}

impl ServiceMonitor {
    pub(crate) fn parse(value: &Value) -> Self {
        serde_json::from_value(value.clone()).expect("a ServiceMonitor")
    }

    pub(crate) fn selector(&self) -> &LabelSelector {
        &self.spec.selector
    }

    pub(crate) fn endpoints(&self) -> &[MonitorEndpoint] {
        &self.spec.endpoints
    }
}

/// `gateway.networking.k8s.io/v1` HTTPRoute: the fields Herald's manifests may use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRoute {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    pub(crate) spec: HttpRouteSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRouteSpec {
    parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostnames: Option<Vec<String>>,
    pub(crate) rules: Vec<RouteRule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParentRef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    section_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) matches: Option<Vec<RouteMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backend_refs: Option<Vec<BackendRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeouts: Option<RouteTimeouts>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<Method>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PathMatch {
    #[serde(rename = "type")]
    pub(crate) kind: PathMatchType,
    pub(crate) value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct BackendRef {
    pub(crate) name: String,
    pub(crate) port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend_request: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> Object {
        crate::render::parse_documents(yaml).remove(0)
    }

    #[test]
    fn a_misspelled_field_fails_the_round_trip() {
        let typo = object(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      terminationGracePeriodSecond: 45\n      containers: [{name: c, image: i:1}]\n",
        );
        let err = check(&typo).unwrap_err();
        assert!(
            err.contains("/spec/template/spec/terminationGracePeriodSecond: unknown field"),
            "{err}"
        );
        let right = object(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      terminationGracePeriodSeconds: 45\n      containers: [{name: c, image: i:1}]\n",
        );
        check(&right).unwrap();
    }

    #[test]
    fn custom_resources_refuse_unknown_fields_and_values() {
        let typo = object(
            "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  endpoints: [{port: admin, scrapeInterval: 15s}]\n",
        );
        assert!(check(&typo).unwrap_err().contains("scrapeInterval"));
        let bad_method = object(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  parentRefs: [{name: g}]\n  rules: [{matches: [{method: post}], backendRefs: [{name: s, port: 80}]}]\n",
        );
        assert!(check(&bad_method).is_err());
        let unknown = object("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n");
        assert!(check(&unknown).unwrap_err().contains("no typed check"));
    }
}
