//! `GET /herald.js`: Herald's browser client, served from the origin a page streams from.
//!
//! The module's source lives in `clients/herald-js/` (with its types and README), where a
//! front-end project can install it as a package; the gateway serves the same file, so a page
//! can `import { connect } from "/herald.js"` without a build step.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

/// The module, as kept in `clients/herald-js/herald.js`.
pub const HERALD_JS: &str = include_str!("../../../clients/herald-js/herald.js");

/// What `herald.js` may weigh once its comments and indentation are gone. A minifier takes it
/// further (shorter names); this is the ceiling a page pays for it before compression.
pub const HERALD_JS_BUDGET: usize = 8 * 1024;

/// Herald's browser client (an ES module).
#[utoipa::path(get, path = "/herald.js", operation_id = "clientScript", tag = "pages", security(()),
    responses((status = 200, description = "The module", content_type = "text/javascript", body = String)))]
pub(crate) async fn script() -> Response {
    javascript(HERALD_JS)
}

/// A script with the headers the gateway serves its scripts with: cached for an hour, taken by
/// the browser as the type it is sent as.
pub(crate) fn javascript(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `source` without its comment lines, trailing comments and indentation: what the size budget
/// is measured on. A `//` inside a string would be cut too, so the module keeps none.
pub fn stripped_len(source: &str) -> usize {
    source
        .lines()
        .map(|line| {
            let code = line.find("//").map_or(line, |at| &line[..at]);
            code.trim()
        })
        .filter(|code| !code.is_empty())
        .map(|code| code.len() + 1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_js_stays_within_its_size_budget() {
        let size = stripped_len(HERALD_JS);
        assert!(
            size <= HERALD_JS_BUDGET,
            "herald.js is {size} bytes without comments and indentation, over its budget of \
             {HERALD_JS_BUDGET} (clients/herald-js/README.md)"
        );
        // The measure saw the module's code.
        assert!(size > 1024, "{size}");
    }

    #[test]
    fn the_stripped_size_leaves_out_comments_and_indentation() {
        assert_eq!(
            stripped_len("// a comment\n  let a = 1; // why\n\n}\n"),
            11 + 2
        );
    }

    #[test]
    fn the_types_declare_what_the_module_exports() {
        let types = include_str!("../../../clients/herald-js/herald.d.ts");
        for export in ["connect", "isAfter", "HeraldStream"] {
            assert!(
                HERALD_JS.contains(&format!("export function {export}("))
                    || HERALD_JS.contains(&format!("export class {export} ")),
                "herald.js does not export {export}"
            );
            assert!(
                types.contains(&format!("declare function {export}"))
                    || types.contains(&format!("declare class {export}<")),
                "herald.d.ts does not declare {export}"
            );
        }
        // No string in the module holds `//`, which the size measure would take for a comment.
        for line in HERALD_JS.lines() {
            let code = line.trim_start();
            if let Some(at) = code.find("//") {
                assert!(
                    code[..at].matches('"').count() % 2 == 0,
                    "a `//` inside a string: {line}"
                );
            }
        }
    }
}
