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
    op_on("name", summary, request, response, conflict)
}

fn op_on(
    param: &str,
    summary: &str,
    request: Option<&str>,
    response: &str,
    conflict: Option<&str>,
) -> Value {
    let mut responses = json!({"200": ok(response), "400": problem("invalid input"), "401": problem("missing or wrong bearer token"), "503": problem("backend unavailable")});
    if let Some(c) = conflict {
        responses["409"] = problem(c);
    }
    let mut o = json!({"summary": summary, "responses": responses});
    if !param.is_empty() {
        o["parameters"] = json!([{"name": param, "in": "path", "required": true, "schema": {"type": "string", "maxLength": 256}}]);
    }
    responses_404(&mut o);
    if let Some(r) = request {
        o["requestBody"] = body(r);
    }
    o
}

fn responses_404(o: &mut Value) {
    o["responses"]["404"] = problem("no such saga or definition");
}

/// The document.
pub(crate) fn document() -> Value {
    let mut doc = base();
    events(&mut doc);
    doc
}

fn base() -> Value {
    let ms = json!({"type": "integer", "minimum": 0});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Mainstay", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Distributed locks with fencing tokens, leader election, and durable sagas. Errors are application/problem+json."},
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
                "Call": {"type": "object", "additionalProperties": false, "description": "an HTTP call (url, optional method; default POST) or a handler registered in a Rust orchestrator",
                    "properties": {"method": {"type": "string"}, "url": {"type": "string", "format": "uri"}, "handler": {"type": "string"}}},
                "RetrySpec": {"type": "object", "additionalProperties": false, "properties": {"max_attempts": {"type": "integer", "minimum": 1, "maximum": 100}, "base_delay_ms": ms, "max_delay_ms": ms}},
                "SagaDefinition": {"type": "object", "additionalProperties": false, "required": ["name", "steps"], "properties": {
                    "name": {"type": "string", "maxLength": 256}, "deadline_ms": {"type": "integer", "minimum": 1},
                    "steps": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"type": "object", "additionalProperties": false, "required": ["name", "action"], "properties": {
                        "name": {"type": "string"}, "action": {"$ref": "#/components/schemas/Call"}, "compensation": {"$ref": "#/components/schemas/Call"},
                        "timeout_ms": {"type": "integer", "minimum": 1}, "retry": {"$ref": "#/components/schemas/RetrySpec"}, "compensation_retry": {"$ref": "#/components/schemas/RetrySpec"}}}}}},
                "SagaDefinitions": {"type": "array", "items": {"$ref": "#/components/schemas/SagaDefinition"}},
                "StartSaga": {"type": "object", "additionalProperties": false, "required": ["definition"], "properties": {"definition": {"type": "string"}, "input": {}, "idempotency_key": {"type": "string", "maxLength": 256}}},
                "Saga": {"type": "object", "properties": {"id": {"type": "string"}, "status": {"enum": ["pending", "running", "completed", "compensating", "failed", "compensation_failed", "aborted"]},
                    "definition": {"$ref": "#/components/schemas/SagaDefinition"}, "input": {}, "error": {"type": ["string", "null"]}, "idempotency_key": {"type": ["string", "null"]},
                    "steps": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "status": {"enum": ["pending", "running", "completed", "failed", "compensating", "compensated", "compensation_failed"]}, "output": {}, "error": {"type": "string"}}}},
                    "created_at_ms": ms, "updated_at_ms": ms, "deadline_at_ms": {"type": ["integer", "null"]}, "history_len": ms, "abort_requested": {"type": "boolean"},
                    "history": {"type": "array", "items": {"type": "object", "properties": {"seq": ms, "at_ms": ms, "event": {"type": "string"}, "step": {"type": "integer"}, "detail": {}}}}}},
                "SagaList": {"type": "object", "properties": {"sagas": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "definition": {"type": "string"}, "status": {"type": "string"}, "error": {"type": ["string", "null"]}, "created_at_ms": ms, "updated_at_ms": ms}}}}},
                "TxnRequest": {"type": "object", "additionalProperties": false, "required": ["participants"], "properties": {"participants": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
                    "type": "object", "additionalProperties": false, "required": ["name"], "description": "an HTTP participant (url: serves POST {url}/prepare|commit|abort) or a configured PostgreSQL resource with the SQL to run in its branch",
                    "properties": {"name": {"type": "string", "maxLength": 64}, "url": {"type": "string", "format": "uri"}, "postgres": {"type": "string"}, "sql": {"type": "array", "items": {"type": "string"}}}}}}},
                "TxnOutcome": {"type": "object", "properties": {"id": {"type": "string"}, "decision": {"enum": ["commit", "abort"]}, "reason": {"type": ["string", "null"]}, "finished": {"type": "boolean"}}},
                "Txn": {"type": "object", "properties": {"id": {"type": "string"}, "coordinator": {"type": "string"}, "state": {"enum": ["preparing", "committing", "aborting", "committed", "aborted"]},
                    "decision": {"enum": ["commit", "abort", null]}, "reason": {"type": ["string", "null"]}, "finished": {"type": "boolean"}, "participants": {"type": "array"},
                    "created_at_ms": ms, "decided_at_ms": {"type": ["integer", "null"]}, "finished_at_ms": {"type": ["integer", "null"]}}},
                "TxnList": {"type": "object", "properties": {"txns": {"type": "array", "items": {"$ref": "#/components/schemas/Txn"}}}},
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
            "/v1/saga-definitions": {"post": op_on("", "Register (or replace) a saga definition; 201", Some("SagaDefinition"), "SagaDefinition", None), "get": op_on("", "All definitions", None, "SagaDefinitions", None)},
            "/v1/saga-definitions/{name}": {"get": op("One definition", None, "SagaDefinition", None)},
            "/v1/sagas": {"post": op_on("", "Start a saga (201), or get the one an idempotency key (body or Idempotency-Key header) already started (200)", Some("StartSaga"), "Saga", None),
                          "get": {"summary": "Sagas, newest first", "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}], "responses": {"200": ok("SagaList"), "400": problem("invalid status or limit")}}},
            "/v1/sagas/{id}": {"get": op_on("id", "A saga with its history; ?wait_ms=N waits for a final status", None, "Saga", None)},
            "/v1/sagas/{id}/retry": {"post": op_on("id", "Retry a saga parked as compensation_failed", None, "Saga", Some("the saga is not parked"))},
            "/v1/sagas/{id}/abort": {"post": op_on("id", "Abort: a running saga compensates; a parked one becomes aborted", None, "Saga", Some("the saga already finished"))},
            "/v1/sagas/{id}/events": {"get": {"summary": "Server-Sent Events: the saga's history entries (id = seq; resume with Last-Event-ID), then live ones, ending at a terminal status (completed, failed, aborted)",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {}}}, "404": problem("no such saga")}}},
            "/v1/txns": {"post": op_on("", "Run a two-phase commit to its decision (commit, or abort with the reason)", Some("TxnRequest"), "TxnOutcome", None),
                         "get": {"summary": "Transactions, newest first", "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}], "responses": {"200": ok("TxnList")}}},
            "/v1/txns/{id}": {"get": op_on("id", "One transaction and its decision (null while preparing): what a participant that restarted while prepared asks", None, "Txn", None)},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness (backend reachable)", "security": [], "responses": {"200": {"description": "ready"}, "503": problem("backend unavailable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text exposition"}}}}
        }
    })
}

fn q(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "schema": schema, "description": description})
}

/// The event store's schemas and paths.
fn events(doc: &mut Value) {
    let ms = json!({"type": "integer", "minimum": 0});
    let position =
        json!({"type": "string", "pattern": "^[0-9]+/[0-9]+$", "description": "COMMIT/PREPARE"});
    let expected = json!({"description": "\"any\" (default), \"no_stream\", \"stream_exists\", or the stream's current version",
        "oneOf": [{"enum": ["any", "no_stream", "stream_exists"]}, {"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+$"}]});
    let events_schema = json!({"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": false, "required": ["type"], "properties": {
        "id": {"type": "string", "maxLength": 256, "description": "give one so a retry is idempotent"},
        "type": {"type": "string", "minLength": 1, "maxLength": 256}, "data": {}, "metadata": {}}}});
    let schemas = json!({
        "AppendRequest": {"type": "object", "additionalProperties": false, "required": ["events"], "properties": {
            "expected_version": expected, "events": events_schema}},
        "AppendManyRequest": {"type": "object", "additionalProperties": false, "required": ["appends"], "properties": {
            "appends": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": false, "required": ["stream", "events"],
                "properties": {"stream": {"type": "string", "maxLength": 256}, "expected_version": expected, "events": events_schema}}}}},
        "AppendManyResult": {"type": "object", "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/AppendResult"}}}},
        "AppendResult": {"type": "object", "properties": {"stream": {"type": "string"}, "next_expected_version": ms, "first_position": position, "last_position": position}},
        "RecordedEvent": {"type": "object", "properties": {"stream": {"type": "string"}, "version": ms, "position": position, "id": {"type": "string"},
            "type": {"type": "string"}, "data": {}, "metadata": {}, "created_at_ms": ms}},
        "StreamRead": {"type": "object", "properties": {"stream": {"type": "string"}, "events": {"type": "array", "items": {"$ref": "#/components/schemas/RecordedEvent"}}}},
        "AllRead": {"type": "object", "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/RecordedEvent"}}, "last_position": position}},
        "StreamMetadata": {"type": "object", "additionalProperties": false, "properties": {"max_count": {"type": "integer", "minimum": 1},
            "max_age_ms": {"type": "integer", "minimum": 1}, "truncate_before": ms, "custom": {}}},
        "Checkpoint": {"type": "object", "required": ["position"], "properties": {"name": {"type": "string"}, "position": {"type": ["string", "null"]}}},
        "SnapshotRequest": {"type": "object", "additionalProperties": false, "required": ["version", "data"], "properties": {
            "version": ms, "data": {"description": "the aggregate's state after folding events up to version (at most 1 MiB as JSON)"}}},
        "Snapshot": {"type": "object", "properties": {"stream": {"type": "string"}, "version": ms, "data": {}, "created_at_ms": ms}},
        "Scavenged": {"type": "object", "properties": {"removed": ms}}
    });
    let stream_param = json!({"name": "stream", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 256}});
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 256}});
    let all_filters = [
        q(
            "stream_prefix",
            json!({"type": "string"}),
            "only streams starting with this",
        ),
        q(
            "event_types",
            json!({"type": "string"}),
            "only these event types, comma-separated",
        ),
    ];
    let responses = |ok_schema: &str, extra: &[(&str, &str)]| {
        let mut r = json!({"200": ok(ok_schema), "400": problem("invalid input"), "401": problem("missing or wrong bearer token"), "503": problem("backend unavailable")});
        for (code, what) in extra {
            r[*code] = problem(what);
        }
        r
    };
    let paths = json!({
        "/v1/streams": {
            "post": {"summary": "Append to several streams in one transaction (all or nothing); one result per append, in order",
                "requestBody": body("AppendManyRequest"),
                "responses": responses("AppendManyResult", &[("409", "wrong expected version or idempotency conflict (names the stream)"), ("410", "a stream is tombstoned"), ("413", "body over 1 MiB")])}
        },
        "/v1/streams/{stream}": {
            "post": {"summary": "Append events atomically if the stream matches expected_version; the same event ids again return the first result", "parameters": [stream_param],
                "requestBody": body("AppendRequest"), "responses": responses("AppendResult", &[("409", "wrong expected version (names expected and actual), or the ids are already stored elsewhere in the stream"), ("410", "the stream is tombstoned"), ("413", "body over 1 MiB")])},
            "get": {"summary": "Read a stream", "parameters": [stream_param, q("from", ms.clone(), "first version (default 0, or the end backward)"),
                q("direction", json!({"enum": ["forward", "backward"]}), "default forward"), q("limit", json!({"type": "integer", "minimum": 1, "maximum": 10000}), "default 100")],
                "responses": responses("StreamRead", &[("404", "no such stream (or soft-deleted)"), ("410", "the stream is tombstoned")])},
            "delete": {"summary": "Delete a stream: soft (reads 404 until an append revives it) or hard (tombstone: 410 for good); 204",
                "parameters": [stream_param, q("mode", json!({"enum": ["soft", "hard"]}), "default soft"), q("expected_version", json!({"type": "string"}), "default any")],
                "responses": {"204": {"description": "deleted"}, "400": problem("invalid input"), "404": problem("no such stream"), "409": problem("wrong expected version"), "410": problem("already tombstoned")}}
        },
        "/v1/streams/{stream}/metadata": {
            "get": {"summary": "Stream metadata (retention, custom)", "parameters": [stream_param], "responses": responses("StreamMetadata", &[])},
            "put": {"summary": "Replace stream metadata: max_count, max_age_ms and truncate_before hide events from reads at once", "parameters": [stream_param],
                "requestBody": body("StreamMetadata"), "responses": responses("StreamMetadata", &[("410", "the stream is tombstoned")])}
        },
        "/v1/streams/{stream}/snapshot": {
            "get": {"summary": "The latest snapshot of the stream's aggregate", "parameters": [stream_param], "responses": responses("Snapshot", &[("404", "no snapshot saved")])},
            "put": {"summary": "Save a snapshot unless a newer one is stored; answers with the snapshot stored afterwards", "parameters": [stream_param],
                "requestBody": body("SnapshotRequest"), "responses": responses("Snapshot", &[("413", "body over 1 MiB")])}
        },
        "/v1/scavenge": {"post": {"summary": "Remove the events retention and soft deletes hide (in batches; appends continue meanwhile)", "responses": responses("Scavenged", &[])}},
        "/v1/all": {"get": {"summary": "Read $all in position order after a position (never skipping an event that commits later)",
            "parameters": [q("after", position.clone(), "default: from the start"), q("limit", json!({"type": "integer", "minimum": 1, "maximum": 10000}), "default 100"), all_filters[0], all_filters[1]],
            "responses": responses("AllRead", &[])}},
        "/v1/all/subscribe": {"get": {"summary": "Server-Sent Events over $all: catch-up then live; SSE id = position, event = type, data = the event. Resume with Last-Event-ID; or start after= a position, or at a durable subscription's checkpoint",
            "parameters": [q("after", position, "start after this position"), q("subscription", json!({"type": "string", "maxLength": 256}), "a durable subscription: start at its checkpoint"),
                all_filters[0], all_filters[1], {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {}}}, "400": problem("invalid position or name")}}},
        "/v1/subscriptions/{name}": {"get": {"summary": "A durable subscription's checkpoint (null before the first save)", "parameters": [name_param], "responses": responses("Checkpoint", &[])}},
        "/v1/subscriptions/{name}/checkpoint": {"post": {"summary": "Save a durable subscription's checkpoint", "parameters": [name_param], "requestBody": body("Checkpoint"), "responses": responses("Checkpoint", &[])}}
    });
    if let (Some(s), Value::Object(new)) = (doc["components"]["schemas"].as_object_mut(), schemas) {
        s.extend(new);
    }
    if let (Some(p), Value::Object(new)) = (doc["paths"].as_object_mut(), paths) {
        p.extend(new);
    }
}
