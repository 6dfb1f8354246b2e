//! The OpenAPI 3 document, generated from the handlers and their types (commerce-client's,
//! so the document describes what the client sends and reads), served at
//! `/api-docs/openapi.json` with a Swagger UI at `/docs`.
//!
//! Each handler documents the answers of its own (success, 403, 404, 409, route-specific
//! 400/422); a modifier adds those that come from the shared layers and extractors,
//! by what the operation has: 401 on routes with a token, 400 `invalid_path` /
//! `invalid_query` with path or query parameters, 400 / 413 / 415 / 422 with a JSON body, and
//! 429 and 503 everywhere but on the probes (`/health`, `/ready`), which sit outside the load
//! shedder and the request timeout. Its unit tests and `scripts/contract.sh` (schemathesis)
//! hold the document to what the server answers.

use axum::Router;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OneOfBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::http::{ErrorBody, ErrorObject};
use crate::services::{admin, ops, order, store};

/// The API's description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce-rs reference order system",
        description = "Orders, stock and payments over HTTP. Authenticate with `Authorization: Bearer <JWT>` \
                       (HS256; `reference-app token --sub alice --role customer` prints one). Every error \
                       is `{\"error\": {\"code\", \"message\", \"details\"}}`; money is integer minor units. \
                       Any route but `/health` and `/ready` answers 429 `too_many_requests` when the server \
                       sheds load and 503 `timeout` when a request outlasts the limit (both with \
                       `Retry-After`); a method a path does not \
                       have answers 405 `method_not_allowed`, an unknown path 404 `route_not_found`. \
                       Integers may be sent as JSON numbers with a zero fraction (`2.0`)."
    ),
    paths(
        store::create_product, store::product, store::rename_product, store::stock,
        store::inbound, store::movements,
        order::routes::place, order::routes::list, order::routes::order, order::routes::watch,
        order::routes::cancel, order::routes::ship, order::routes::deliver,
        admin::dead_letters, admin::replay, admin::audit,
        admin::consumer_dead_letters, admin::replay_consumer, admin::discard_consumer,
        ops::health, ops::ready, ops::metrics,
    ),
    components(schemas(ErrorBody, ErrorObject)),
    modifiers(&BearerAuth, &SharedAnswers),
    tags(
        (name = "store", description = "catalogue, stock, inbound stock, ledger"),
        (name = "orders", description = "placing, reading, watching and moving orders"),
        (name = "admin", description = "dead letters and the audit"),
        (name = "ops", description = "health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The answers every operation shares through the HTTP layers and extractors.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        unique_order_lines(openapi);
        for (path, item) in &mut openapi.paths.paths {
            // The probes are mounted outside the load shedder and the request timeout.
            let layered = !PROBES.contains(&path.as_str());
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_answers(operation, layered);
            }
        }
    }
}

/// The paths outside the load shedder and the request timeout (`crate::http::layered`).
const PROBES: [&str; 2] = ["/health", "/ready"];

/// `uniqueItems` on `PlaceOrder.items` (no derive attribute sets it on a `Vec`): two equal
/// lines are refused like any two lines of one product.
fn unique_order_lines(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Schema;
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(order))) = components.schemas.get_mut("PlaceOrder") {
        if let Some(RefOr::T(Schema::Array(items))) = order.properties.get_mut("items") {
            items.unique_items = true;
        }
    }
}

fn error_answer(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}

/// The 400 codes of `operation`'s path, query, body and headers.
fn bad_request_codes(operation: &Operation) -> Vec<&'static str> {
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has = |place: ParameterIn| {
        parameters
            .iter()
            .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
    };
    let mut codes = Vec::new();
    if has(ParameterIn::Path) {
        codes.push(
            "`invalid_path`: a path parameter does not parse (integer product ids, UUID order ids)",
        );
    }
    if has(ParameterIn::Query) {
        codes.push("`invalid_query`: a query parameter does not parse or is out of range");
    }
    if operation.request_body.is_some() {
        codes.push("`invalid_json`: the body is not JSON");
        codes.push("`bad_request`: the body cannot be read");
    }
    if has(ParameterIn::Header) {
        codes.push("`bad_request`: a header is not visible ASCII");
    }
    codes
}

/// Adds the shared layers' and extractors' answers to `operation`; `layered`: behind the load
/// shedder and the request timeout (429, 503).
fn add_shared_answers(operation: &mut Operation, layered: bool) {
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = operation.request_body.is_some();
    let bad_request = bad_request_codes(operation);
    let answers = &mut operation.responses.responses;
    if !bad_request.is_empty() && !answers.contains_key("400") {
        answers.insert("400".into(), error_answer(&bad_request.join("; ")));
    }
    if secured {
        answers.insert(
            "401".into(),
            error_answer(
                "`unauthorized`: no bearer token, or one that is malformed, forged or expired",
            ),
        );
    }
    if has_body {
        answers.insert(
            "413".into(),
            error_answer("`payload_too_large`: the body is larger than the server accepts (`BODY_LIMIT_BYTES`)"),
        );
        answers.insert(
            "415".into(),
            error_answer("`unsupported_media_type`: the body is not sent as `Content-Type: application/json`"),
        );
        answers.entry("422".into()).or_insert_with(|| {
            error_answer("`validation_failed`: the JSON has the wrong shape, types or values")
        });
    }
    if !layered {
        return;
    }
    let shed =
        "`too_many_requests`: the server is at its limit of requests in flight; retry after \
                `Retry-After` seconds";
    match answers.get_mut("429") {
        // A route with a limit of its own (a rate, a cap on streams) documents it.
        Some(RefOr::T(own)) => own.description = format!("{}; or {shed}", own.description),
        _ => {
            answers.insert("429".into(), error_answer(shed));
        }
    }
    let unavailable = "`timeout`: the request outlasted the limit (it may still complete; a placement is safe to \
                       repeat with its idempotency key); `unavailable`: a dependency is down; `conflict_retry`: \
                       the request met a concurrent change and wrote nothing; `overloaded`: too many orders wait for \
                       the product (nothing written); `outcome_unknown`: the connection broke while committing. Retry after `Retry-After` seconds";
    match answers.get_mut("503") {
        // `/ready` answers 503 with its checks; the shared layers with an error body.
        Some(RefOr::T(own)) => {
            for content in own.content.values_mut() {
                let RefOr::T(content) = content else {
                    continue;
                };
                let Some(schema) = content.schema.take() else {
                    continue;
                };
                content.schema = Some(
                    OneOfBuilder::new()
                        .item(schema)
                        .item(Ref::from_schema_name("ErrorBody"))
                        .into(),
                );
            }
            own.description = format!("{}; or {unavailable}", own.description);
        }
        _ => {
            answers.insert("503".into(), error_answer(unavailable));
        }
    }
}

/// `/api-docs/openapi.json` and the Swagger UI at `/docs`.
pub fn router() -> Router {
    Router::new().merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", ApiDoc::openapi()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::OpenApi;

    use super::ApiDoc;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    #[test]
    fn every_operation_documents_the_shared_answers() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let answers = operation["responses"].as_object().unwrap();
                if super::PROBES.contains(&path.as_str()) {
                    // Never shed, never timed out: `/ready`'s 503 is its own.
                    assert!(!answers.contains_key("429"), "{method} {path}: 429");
                    assert_eq!(answers.contains_key("503"), path == "/ready", "{path}: 503");
                } else {
                    for status in ["429", "503"] {
                        assert!(answers.contains_key(status), "{method} {path}: no {status}");
                    }
                }
                let secured = operation["security"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty());
                assert_eq!(answers.contains_key("401"), secured, "{method} {path}: 401");
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(answers.contains_key(status), "{method} {path}: no {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_route_with_a_limit_of_its_own_keeps_it_beside_the_shedders_429() {
        let doc = document();
        for (path, method, own) in [
            ("/api/v1/orders", "post", "rate_limited"),
            ("/api/v1/orders/{id}/events", "get", "too_many_streams"),
        ] {
            let answer = &doc["paths"][path][method]["responses"]["429"];
            let description = answer["description"].as_str().unwrap();
            for code in [own, "too_many_requests"] {
                assert!(description.contains(code), "{method} {path}: {description}");
            }
            assert!(answer["headers"]["Retry-After"].is_object(), "{answer}");
        }
        let events = &doc["paths"]["/api/v1/orders/{id}/events"]["get"]["responses"];
        for status in ["204", "400"] {
            assert!(events[status].is_object(), "events: no {status}");
        }
    }

    #[test]
    fn request_schemas_carry_the_servers_limits() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let item = &schemas["OrderItem"]["properties"]["quantity"];
        assert_eq!(
            (&item["minimum"], &item["maximum"]),
            (&Value::from(1), &Value::from(10_000))
        );
        let items = &schemas["PlaceOrder"]["properties"]["items"];
        assert_eq!(
            (
                &items["minItems"],
                &items["maxItems"],
                &items["uniqueItems"]
            ),
            (&Value::from(1), &Value::from(100), &Value::Bool(true))
        );
        for request in ["PlaceOrder", "OrderItem", "CreateProduct", "Inbound"] {
            assert_eq!(
                schemas[request]["additionalProperties"],
                Value::Bool(false),
                "{request}"
            );
        }
        let required = |name: &str| schemas[name]["required"].clone();
        assert_eq!(required("PlaceOrder"), serde_json::json!(["items"]));
        assert_eq!(
            required("CreateProduct"),
            serde_json::json!(["sku", "name", "price"])
        );
    }
}
