//! Which URLs the server may call on a caller's behalf: saga step and compensation URLs,
//! two-phase commit HTTP participants.
//!
//! Those URLs come from requests, so without a limit anyone who can reach the API could make
//! the server send requests anywhere it can reach — internal services, cloud metadata
//! addresses (server-side request forgery). [`AllowedTargets`] is an allow-list of
//! origins (`scheme://host[:port]`), configured as `[txn] allowed_participants` in
//! `mainstay.toml`. Default, like the token rule: a server listening on loopback only
//! may call any target (development); one listening on another address calls only what
//! the list allows (empty: nothing). A refused URL is a 403 naming the URL and how to
//! allow it. Participant calls do not follow redirects
//! ([`mainstay_txn::participant_client`]), so an allowed target cannot bounce a call
//! elsewhere.
//!
//! Limits: a host name is matched as written; what it resolves to is not checked (list
//! names you control). PostgreSQL 2PC resources are not request input: they are named
//! in the server's own configuration.

use crate::problem::Problem;
use axum::http::StatusCode;
use std::net::SocketAddr;

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &reqwest::Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

/// The targets the server may call.
#[derive(Clone, Debug)]
pub struct AllowedTargets {
    /// `None`: any target.
    only: Option<Vec<Origin>>,
}

impl AllowedTargets {
    /// Any target (a server on loopback, by default).
    pub fn any() -> Self {
        AllowedTargets { only: None }
    }

    /// Only URLs whose origin is one of `origins` (`http://host:port`, `https://host`).
    /// An entry that is not an origin is refused, naming it.
    pub fn only<S: AsRef<str>>(origins: &[S]) -> Result<Self, String> {
        let mut list = Vec::new();
        for entry in origins {
            let entry = entry.as_ref().trim();
            let parsed = reqwest::Url::parse(entry).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
            });
            let origin = parsed.as_ref().and_then(Origin::of).ok_or_else(|| {
                format!(
                    "invalid allowed participant {entry:?}: expected an origin such as \"http://inventory:8080\" or \"https://payments.internal\""
                )
            })?;
            list.push(origin);
        }
        Ok(AllowedTargets { only: Some(list) })
    }

    /// The default for a server listening on `listen`: any target on loopback, else only
    /// `configured` (empty: nothing). A configured list applies on loopback too.
    pub fn for_listen<S: AsRef<str>>(
        listen: &SocketAddr,
        configured: Option<&[S]>,
    ) -> Result<Self, String> {
        match configured {
            Some(list) => Self::only(list),
            None if listen.ip().is_loopback() => Ok(Self::any()),
            None => Self::only::<&str>(&[]),
        }
    }

    /// Ok when the server may call `url`; a 403 problem naming it otherwise. `field` is
    /// where the URL was in the request.
    pub(crate) fn check(&self, field: &str, url: &str) -> Result<(), Problem> {
        let Some(list) = &self.only else {
            return Ok(());
        };
        let origin = reqwest::Url::parse(url).ok().as_ref().and_then(Origin::of);
        if origin.is_some_and(|o| list.contains(&o)) {
            return Ok(());
        }
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "target-not-allowed",
            format!("this server may not call {url}"),
        )
        .with("url", url)
        .with("field", field)
        .with(
            "detail",
            "a server listening beyond loopback calls only the origins in [txn] allowed_participants (mainstay.toml) or MAINSTAY_ALLOWED_PARTICIPANTS; add this URL's origin there (e.g. \"http://host:port\")",
        ))
    }

    /// Checks every HTTP call of a saga definition.
    pub(crate) fn check_definition(
        &self,
        def: &mainstay_txn::saga::SagaDefinition,
    ) -> Result<(), Problem> {
        for (i, step) in def.steps.iter().enumerate() {
            if let Some(url) = &step.action.url {
                self.check(&format!("steps[{i}].action.url"), url)?;
            }
            if let Some(url) = step.compensation.as_ref().and_then(|c| c.url.as_ref()) {
                self.check(&format!("steps[{i}].compensation.url"), url)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_scheme_host_and_effective_port() {
        let t = AllowedTargets::only(&["http://Inventory:8080", "https://pay.internal"]).unwrap();
        assert!(t.check("u", "http://inventory:8080/reserve?x=1").is_ok());
        assert!(t.check("u", "https://pay.internal:443/charge").is_ok());
        for refused in [
            "http://inventory:8081/reserve",
            "https://inventory:8080/reserve",
            "http://pay.internal/charge",
            "http://169.254.169.254/latest/meta-data/",
            "not a url",
        ] {
            let p = t.check("steps[0].action.url", refused).unwrap_err();
            assert_eq!(p.status(), StatusCode::FORBIDDEN, "{refused}");
        }
    }

    #[test]
    fn loopback_allows_any_unless_configured_and_public_allows_only_the_list() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let none: Option<&[&str]> = None;
        assert!(AllowedTargets::for_listen(&lo, none)
            .unwrap()
            .check("u", "http://anything:1/")
            .is_ok());
        assert!(AllowedTargets::for_listen(&public, none)
            .unwrap()
            .check("u", "http://anything:1/")
            .is_err());
        let list = ["http://a:1"];
        let t = AllowedTargets::for_listen(&lo, Some(&list[..])).unwrap();
        assert!(t.check("u", "http://a:1/x").is_ok());
        assert!(t.check("u", "http://b:1/x").is_err());
    }

    #[test]
    fn an_entry_that_is_not_an_origin_is_refused_by_name() {
        for bad in ["inventory:8080", "ftp://x", "http://x/path", "http://u:p@x"] {
            let err = AllowedTargets::only(&[bad]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
