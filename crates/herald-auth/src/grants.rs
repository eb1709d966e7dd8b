//! What a client may do: [`Grants`] (the `herald` claim of a token, or the anonymous access the
//! server allows) and the [`Principal`] a request acts as.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::{Topic, TopicPattern, covers};
use herald_runtime::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

/// The topics and patterns a client may subscribe to and publish on, in Herald's topic syntax.
/// A grant covers a request when every topic the request can match, the grant matches too
/// ([`herald_core::covers`]): `a.*` covers `a.b` and `a.*`, not `a.>`; `>` covers everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// What the client may stream and read the history of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// What the client may publish on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

impl Grants {
    /// Everything: subscribe and publish `>`.
    pub fn all() -> Self {
        Self {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
        }
    }

    /// Checks that every entry is a topic or a pattern.
    pub fn validate(&self) -> Result<(), String> {
        self.subscribe
            .iter()
            .chain(&self.publish)
            .try_for_each(|g| grant_pattern(g).map(drop))
    }

    /// These grants and `other`'s.
    pub fn union(mut self, other: &Grants) -> Self {
        self.subscribe.extend(other.subscribe.iter().cloned());
        self.publish.extend(other.publish.iter().cloned());
        self
    }
}

/// A topic or a pattern, as a grant is written (the value parser of the anonymous options).
pub fn grant_pattern(s: &str) -> Result<String, String> {
    let valid = if s.contains(['*', '>']) {
        TopicPattern::new(s).is_ok()
    } else {
        Topic::new(s).is_ok()
    };
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a topic or pattern (levels of [A-Za-z0-9_-], `*`, a last `>`)"
        ))
    }
}

/// The first of `requested` that no grant covers.
fn first_uncovered<'a>(
    granted: &[String],
    requested: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    requested
        .into_iter()
        .find(|r| !granted.iter().any(|g| covers(g, r)))
}

/// Who a request acts as: a token's subject and grants (with the anonymous grants added), or an
/// anonymous client with only the anonymous grants.
#[derive(Debug, Clone)]
pub struct Principal {
    subject: Option<String>,
    grants: Grants,
    expires: Option<u64>,
    authenticated: bool,
}

impl Principal {
    /// A client without a token.
    pub fn anonymous(grants: Grants) -> Self {
        Self {
            subject: None,
            grants,
            expires: None,
            authenticated: false,
        }
    }

    /// A client whose token was verified: its `sub`, its grants, and when it stops being valid
    /// (Unix seconds: `exp` and the leeway).
    pub fn authenticated(subject: Option<String>, grants: Grants, expires: Option<u64>) -> Self {
        Self {
            subject,
            grants,
            expires,
            authenticated: true,
        }
    }

    /// The token's `sub`, for logs and traces.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Whether the client showed a valid token.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// What the client may do.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// How long until the token stops being valid (zero once it has); `None` without one.
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = UNIX_EPOCH + Duration::from_secs(self.expires?);
        Some(exp.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// `Ok` when every topic and pattern in `requested` may be streamed or read; otherwise 401
    /// (no token) or 403 (a token whose grants fall short), naming the first one refused.
    pub fn may_subscribe<'a>(
        &self,
        requested: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        match first_uncovered(&self.grants.subscribe, requested) {
            None => Ok(()),
            Some(topic) => Err(self.refusal("reading", topic)),
        }
    }

    /// `Ok` when every topic may be published on (a batch is all or nothing); otherwise 401 or
    /// 403 naming the first topic refused.
    pub fn may_publish<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        match first_uncovered(&self.grants.publish, topics) {
            None => Ok(()),
            Some(topic) => Err(self.refusal("publishing on", topic)),
        }
    }

    fn refusal(&self, what: &str, topic: &str) -> ApiError {
        if self.authenticated {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("the token does not grant {what} `{topic}`"),
            )
        } else {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "{what} `{topic}` needs a token (Authorization: Bearer, or the token cookie)"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(subscribe: &[&str], publish: &[&str]) -> Principal {
        let grants = Grants {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
        };
        Principal::authenticated(Some("alice".into()), grants, None)
    }

    #[test]
    fn grants_do_not_escalate() {
        let p = token(&["a.*"], &["a.b"]);
        assert!(p.may_subscribe(["a.b", "a.*"]).is_ok());
        for asked in ["a.>", ">", "b", "a", "a.b.c"] {
            let e = p.may_subscribe(["a.b", asked]).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{asked}");
            assert!(e.message.contains(&format!("`{asked}`")), "{}", e.message);
        }
        assert!(p.may_publish(["a.b"]).is_ok());
        let e = p.may_publish(["a.b", "a.c"]).unwrap_err();
        assert!(e.message.contains("`a.c`"), "{}", e.message);
    }

    #[test]
    fn no_token_is_401_and_a_short_token_403() {
        let anonymous = Principal::anonymous(Grants {
            subscribe: vec!["scores.>".into()],
            publish: vec![],
        });
        assert!(anonymous.may_subscribe(["scores.uk"]).is_ok());
        assert_eq!(
            anonymous.may_subscribe(["private"]).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            anonymous.may_publish(["scores.uk"]).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            token(&[], &[]).may_publish(["x"]).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn grant_patterns_are_checked() {
        assert!(grant_pattern("scores.>").is_ok());
        assert!(grant_pattern(">").is_ok());
        for bad in ["", "a..b", "a.>.b", "a b", "a\n"] {
            assert!(grant_pattern(bad).is_err(), "{bad:?}");
        }
        let g = Grants {
            subscribe: vec!["ok".into(), "not ok".into()],
            publish: vec![],
        };
        assert!(g.validate().is_err());
    }
}
