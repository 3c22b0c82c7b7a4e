//! The OpenAPI 3.1 document served at `/v1/openapi.json`.

use serde_json::{json, Value};

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn op(summary: &str, request: Option<&str>, response: &str, conflict: Option<&str>) -> Value {
    let mut responses = json!({"200": ok(response), "400": problem("invalid input"), "401": problem("missing or wrong bearer token"), "503": problem("backend unavailable")});
    if let Some(c) = conflict {
        responses["409"] = problem(c);
    }
    let mut o = json!({"summary": summary, "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 256}}], "responses": responses});
    if let Some(r) = request {
        o["requestBody"] = body(r);
    }
    o
}

/// The document.
pub(crate) fn document() -> Value {
    let ms = json!({"type": "integer", "minimum": 0});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Mainstay", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Distributed locks with fencing tokens and leader election. Errors are application/problem+json."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "AcquireRequest": {"type": "object", "additionalProperties": false, "required": ["ttl_ms"],
                    "properties": {"ttl_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000}, "wait_ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000}, "owner": {"type": "string", "maxLength": 256}}},
                "ExtendRequest": {"type": "object", "additionalProperties": false, "required": ["lease_id", "ttl_ms"],
                    "properties": {"lease_id": {"type": "string"}, "ttl_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000}}},
                "ReleaseRequest": {"type": "object", "additionalProperties": false, "required": ["lease_id"], "properties": {"lease_id": {"type": "string"}}},
                "Lease": {"type": "object", "properties": {"name": {"type": "string"}, "lease_id": {"type": "string"}, "owner": {"type": "string"},
                    "fencing_token": ms, "expires_at_ms": ms, "ttl_ms": ms}},
                "Released": {"type": "object", "properties": {"name": {"type": "string"}, "released": {"type": "boolean"}}},
                "LockStatus": {"type": "object", "properties": {"name": {"type": "string"}, "held": {"type": "boolean"},
                    "holder": {"type": ["object", "null"], "properties": {"owner": {"type": "string"}, "fencing_token": ms, "expires_at_ms": ms}}}},
                "CampaignRequest": {"type": "object", "additionalProperties": false, "required": ["candidate", "ttl_ms"],
                    "properties": {"candidate": {"type": "string", "minLength": 1, "maxLength": 256}, "ttl_ms": {"type": "integer", "minimum": 1}, "wait_ms": {"type": "integer", "minimum": 0}}},
                "KeepaliveRequest": {"type": "object", "additionalProperties": false, "required": ["lease_id", "ttl_ms"], "properties": {"lease_id": {"type": "string"}, "ttl_ms": {"type": "integer", "minimum": 1}}},
                "ResignRequest": {"type": "object", "additionalProperties": false, "required": ["lease_id"], "properties": {"lease_id": {"type": "string"}}},
                "Term": {"type": "object", "properties": {"name": {"type": "string"}, "candidate": {"type": "string"}, "lease_id": {"type": "string"}, "epoch": ms, "expires_at_ms": ms, "ttl_ms": ms}},
                "Resigned": {"type": "object", "properties": {"name": {"type": "string"}, "resigned": {"type": "boolean"}}},
                "LeaderStatus": {"type": "object", "properties": {"name": {"type": "string"},
                    "leader": {"type": ["object", "null"], "properties": {"name": {"type": "string"}, "candidate": {"type": "string"}, "epoch": ms, "expires_at_ms": ms}}}},
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/locks/{name}/acquire": {"post": op("Acquire a lock, waiting up to wait_ms", Some("AcquireRequest"), "Lease", Some("held by someone else when the wait ran out (names the holder and its expiry)"))},
            "/v1/locks/{name}/extend": {"post": op("Extend a lease", Some("ExtendRequest"), "Lease", Some("the lease no longer holds the lock"))},
            "/v1/locks/{name}/release": {"post": op("Release a lease (owner-checked)", Some("ReleaseRequest"), "Released", Some("the lease does not hold the lock"))},
            "/v1/locks/{name}": {"get": op("Current holder", None, "LockStatus", None)},
            "/v1/elections/{name}/campaign": {"post": op("Campaign; blocks up to wait_ms until leader", Some("CampaignRequest"), "Term", Some("another candidate leads"))},
            "/v1/elections/{name}/keepalive": {"post": op("Renew a term", Some("KeepaliveRequest"), "Term", Some("no longer the leader"))},
            "/v1/elections/{name}/resign": {"post": op("Step down", Some("ResignRequest"), "Resigned", Some("not the leader"))},
            "/v1/elections/{name}": {"get": op("Current leader", None, "LeaderStatus", None)},
            "/v1/elections/{name}/observe": {"get": {"summary": "Server-Sent Events: `leader` events with the leader (or null) now and on every change",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "interval_ms", "in": "query", "schema": {"type": "integer", "minimum": 10}}],
                "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness (backend reachable)", "security": [], "responses": {"200": {"description": "ready"}, "503": problem("backend unavailable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text exposition"}}}}
        }
    })
}
