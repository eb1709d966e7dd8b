//! The deployment artefacts, checked offline: every kustomize overlay rendered by the real
//! `kubectl kustomize` and parsed into the typed Kubernetes API (a misspelled field fails), the
//! policies a zero-loss rollout depends on, the Dockerfile through hadolint, the compose file,
//! the image's health probe, and the documents (links, and flags against `--help`).
//!
//! `kubectl` and `hadolint` come from PyPI (`tests/servers/install`), found through
//! `$HERALD_KUBECTL` and `$HERALD_HADOLINT` or their install places.

mod compose;
mod docker;
mod docs;
mod manifests;
mod render;
mod typed;
