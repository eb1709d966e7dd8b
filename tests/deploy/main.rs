//! The deployment artefacts, checked offline: every kustomize overlay rendered by the real
//! `kubectl kustomize` and parsed into the typed Kubernetes API (a misspelled field fails), the
//! policies a zero-loss rollout depends on, the Dockerfile through hadolint, the compose file,
//! and the image's health probe.
//!
//! `kubectl` and `hadolint` come from PyPI (`tests/servers/install`), found through
//! `$HERALD_KUBECTL` and `$HERALD_HADOLINT` or their install places.

mod compose;
mod docker;
mod manifests;
mod render;
mod typed;
