//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from the handlers.
//!
//! Each handler carries a `#[utoipa::path]` with its own request and response types (whose
//! schemas are derived from the Rust types the handler reads and writes) and the statuses
//! only it answers. What the shared pieces answer is added here, by rule, so it cannot be
//! forgotten on one operation: every JSON body is read by the same extractor (400 invalid
//! JSON or field, 413 too large, 415 not JSON), every path or query parameter is parsed
//! the same way (400), every `/v1` call may find its backend unavailable (503), and when
//! the server has a token the auth middleware answers 401 — then, and only then, the
//! document requires the bearer scheme.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, RefOr};

/// The document's fixed parts; paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Mainstay",
        description = "Distributed locks with fencing tokens, leader election, durable sagas, two-phase commit and an event store. Errors are application/problem+json (RFC 9457)."
    ),
    components(schemas(
        ProblemDoc,
        crate::events::DirectionDoc,
        crate::events::DeleteModeDoc,
        mainstay_txn::saga::SagaStatus
    ))
)]
pub(crate) struct ApiDoc;

/// An RFC 9457 problem: a stable `type`, a human `title`, the HTTP `status`, and the
/// members a client needs to act (the holder of a busy lock, the field that was wrong).
#[derive(utoipa::ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)] // A schema only: problems are built by `crate::problem::Problem`.
pub(crate) struct ProblemDoc {
    /// `urn:mainstay:problem:<kind>`.
    r#type: String,
    /// What went wrong, for people.
    title: String,
    /// The HTTP status.
    status: u16,
}

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                )))),
            )
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| problem(description));
}

/// Adds what the shared extractors and middleware answer, the security scheme when
/// `auth` (a token is configured), and this server's bound on `wait_ms`.
pub(crate) fn finish(doc: &mut OpenApi, auth: bool, max_wait_ms: u64) {
    bound_waits(doc, max_wait_ms);
    for (path, item) in doc.paths.paths.iter_mut() {
        let v1 = path.starts_with("/v1/") && path != "/v1/openapi.json";
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if op.request_body.is_some() {
                add(op, "400", "invalid JSON body or field");
                add(op, "413", "body larger than 1 MiB");
                add(op, "415", "the body is not sent as application/json");
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                add(op, "400", "invalid path or query parameter");
            }
            if v1 {
                add(op, "503", "the backend is unavailable");
                if auth {
                    add(op, "401", "missing or wrong bearer token");
                }
            } else {
                // Health, readiness, metrics and this document are open.
                op.security = Some(Vec::new());
            }
        }
    }
    if auth {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Every `wait_ms` (body property or query parameter) is at most `max_wait_ms`
/// ([`crate::AppState::check_wait`] refuses more).
fn bound_waits(doc: &mut OpenApi, max_wait_ms: u64) {
    use utoipa::openapi::schema::Schema;
    fn bound(schema: &mut RefOr<Schema>, max: u64) {
        if let RefOr::T(Schema::Object(o)) = schema {
            let current = o
                .maximum
                .as_ref()
                .and_then(|n| serde_json::to_value(n).ok())
                .and_then(|v| v.as_u64())
                .unwrap_or(u64::MAX);
            o.maximum = Some(current.min(max).into());
        }
    }
    if let Some(components) = doc.components.as_mut() {
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(o)) = schema {
                if let Some(w) = o.properties.get_mut("wait_ms") {
                    bound(w, max_wait_ms);
                }
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        for op in [item.get.as_mut(), item.post.as_mut()]
            .into_iter()
            .flatten()
        {
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "wait_ms" {
                    if let Some(schema) = p.schema.as_mut() {
                        bound(schema, max_wait_ms);
                    }
                }
            }
        }
    }
}
