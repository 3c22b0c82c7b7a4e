//! Participants in any language, over HTTP.
//!
//! `POST {url}/prepare`, `POST {url}/commit`, `POST {url}/abort`, each with the JSON body
//! `{"txid": "..."}` and the header `Mainstay-Txn-Id`. For prepare, a 2xx is a yes vote and
//! anything else (4xx, 5xx, timeout) is a no; for commit and abort, a 2xx acknowledges and
//! anything else is retried. A participant that restarts while prepared asks the
//! coordinator for the decision: `GET /v1/txns/{txid}` on `mainstay serve`.

use super::{Participant, ParticipantError, Vote};
use async_trait::async_trait;
use std::time::Duration;

/// An HTTP participant at a base URL.
#[derive(Clone, Debug)]
pub struct HttpParticipant {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl HttpParticipant {
    /// A participant at `url` (no trailing slash needed), each call bounded by `timeout`.
    pub fn new(client: reqwest::Client, url: impl Into<String>, timeout: Duration) -> Self {
        HttpParticipant {
            client,
            url: url.into().trim_end_matches('/').to_string(),
            timeout,
        }
    }

    async fn post(&self, what: &str, txid: &str) -> Result<reqwest::Response, ParticipantError> {
        self.client
            .post(format!("{}/{what}", self.url))
            .timeout(self.timeout)
            .header("Mainstay-Txn-Id", txid)
            .json(&serde_json::json!({ "txid": txid }))
            .send()
            .await
            .map_err(|e| ParticipantError(format!("{}/{what}: {e}", self.url)))
    }
}

#[async_trait]
impl Participant for HttpParticipant {
    async fn prepare(&self, txid: &str) -> Result<Vote, ParticipantError> {
        let r = self.post("prepare", txid).await?;
        if r.status().is_success() {
            return Ok(Vote::Commit);
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Ok(Vote::Abort(format!(
            "{}/prepare: {status}: {}",
            self.url,
            body.chars().take(256).collect::<String>()
        )))
    }

    async fn commit(&self, txid: &str) -> Result<(), ParticipantError> {
        let r = self.post("commit", txid).await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(ParticipantError(format!(
                "{}/commit: {}",
                self.url,
                r.status()
            )))
        }
    }

    async fn abort(&self, txid: &str) -> Result<(), ParticipantError> {
        let r = self.post("abort", txid).await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(ParticipantError(format!(
                "{}/abort: {}",
                self.url,
                r.status()
            )))
        }
    }
}
