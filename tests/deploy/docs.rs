//! The documents a newcomer reads are true to the code: every relative link and anchor in the
//! README and `docs/` leads somewhere, and every `--flag` they name is a flag of the Herald
//! binary's `--help` (or, for the few commands of other tools they show, one of that tool's).

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::render::{help, repo};

/// The Markdown a reader follows from the README.
fn documents() -> Vec<String> {
    let mut files = vec![
        "README.md".to_owned(),
        "k8s/README.md".to_owned(),
        "proto/README.md".to_owned(),
    ];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fence = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fence = !fence;
        } else if !fence && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// `[text](target)` targets.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_owned()))
        .collect()
}

#[test]
fn every_link_in_the_docs_leads_somewhere() {
    let mut broken = Vec::new();
    for file in documents() {
        let path = repo().join(&file);
        let text = std::fs::read_to_string(&path).unwrap();
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (to, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if to.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(to)
            };
            if !dest.exists() {
                broken.push(format!("{file}: {target} (no such file)"));
            } else if !anchor.is_empty() {
                let dest_text = std::fs::read_to_string(&dest).unwrap();
                if !anchors(&dest_text).contains(anchor) {
                    broken.push(format!("{file}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // The check itself finds a broken one.
    assert_eq!(
        links("see [x](nowhere.md#a) and [y](#b)"),
        ["nowhere.md#a", "#b"]
    );
    assert!(anchors("# The API (v1)\n```\n# not a heading\n```\n").contains("the-api-v1"));
}

/// Flags of other tools that the docs show in their commands.
const OTHER_TOOLS: &[(&str, &str)] = &[
    ("--release", "cargo"),
    ("--bench", "cargo"),
    ("--test", "cargo test"),
    ("--nocapture", "cargo test (the test binary)"),
    ("--test-threads", "cargo test (the test binary)"),
    ("--print-env", "tests/servers/install"),
    ("--open", "cargo doc"),
    ("--depth", "cargo tree"),
    ("--build", "docker compose up"),
    ("--tool", "valgrind"),
    ("--from-literal", "kubectl create secret"),
    ("--install", "helm upgrade"),
    ("--create-namespace", "helm upgrade"),
    // The load generator (`herald-bench fanout --help`), built by benches/run, not by tests/run.
    ("--http2-streams", "herald-bench"),
];

/// `--flag` tokens in code spans and code blocks.
fn flags(text: &str) -> BTreeSet<String> {
    let mut fence = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fence = !fence;
            continue;
        }
        let code: Vec<&str> = if fence {
            vec![line]
        } else {
            line.split('`').skip(1).step_by(2).collect()
        };
        for span in code {
            for (i, _) in span.match_indices("--") {
                let before = span[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
                    continue;
                }
                let name: String = span[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                    .collect();
                if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    out.insert(format!("--{name}"));
                }
            }
        }
    }
    out
}

#[test]
fn every_flag_in_the_docs_is_a_flag_of_a_binary() {
    let helps: String = [
        "herald",
        "herald token",
        "herald publish",
        "herald tail",
        "herald-ingest",
        "herald-gateway",
        "herald-redis-bridge",
        "herald-probe",
    ]
    .iter()
    .map(|b| help(b))
    .collect();
    // Every line of the help texts, read as code.
    let known = flags(&format!("```\n{helps}\n```"));
    let mut unknown = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(repo().join(&file)).unwrap();
        for flag in flags(&text) {
            if !known.contains(&flag) && !OTHER_TOOLS.iter().any(|(f, _)| *f == flag) {
                unknown.push(format!("{file}: {flag}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags no binary knows:\n{}",
        unknown.join("\n")
    );
    assert!(known.contains("--max-batch") && known.contains("--redis-poll"));
    assert_eq!(
        flags("run `herald --heartbeat 5s`, not --ignored; a-->b"),
        BTreeSet::from(["--heartbeat".to_owned()])
    );
}

/// The security defaults table of docs/security.md says what `herald --help` says: each option's
/// default, or none for "none" and "off".
#[test]
fn the_documented_security_defaults_are_the_binarys() {
    let doc = std::fs::read_to_string(repo().join("docs/security.md")).unwrap();
    let table = doc
        .split("## Defaults")
        .nth(1)
        .expect("a Defaults section")
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    let help = help("herald");
    let mut rows = 0;
    for row in table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let flag = cells[1].trim_matches('`');
        let documented = cells[2].trim_matches('`');
        // The option's block in --help: from its line to the next option's.
        let start = help
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{flag} ")) || l.trim() == flag)
            .unwrap_or_else(|| panic!("{flag} is not in herald --help"));
        let block: Vec<&str> = help
            .lines()
            .skip(start + 1)
            .take_while(|l| !l.trim_start().starts_with("--"))
            .collect();
        let default = block
            .iter()
            .find_map(|l| l.trim().strip_prefix("[default: ")?.strip_suffix(']'));
        match documented {
            "none" | "off" => assert_eq!(default, None, "{flag}: documented {documented}"),
            value => assert_eq!(default, Some(value), "{flag}"),
        }
        rows += 1;
    }
    assert!(rows >= 10, "the table has {rows} rows");
}

/// `docs/openapi.json` (kept current by `herald-standalone`'s `openapi` test) passes an OpenAPI
/// 3.1 validator that is not ours (openapi-spec-validator, PyPI).
#[test]
fn the_openapi_document_passes_an_openapi_validator() {
    let validator = herald_tests::cluster::server_bin(
        "HERALD_OPENAPI_SPEC_VALIDATOR",
        herald_tests::cluster::cache_dir().join("schemathesis/bin/openapi-spec-validator"),
    );
    let out = Command::new(validator)
        .arg(repo().join("docs/openapi.json"))
        .output()
        .expect("running openapi-spec-validator");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("OK"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
