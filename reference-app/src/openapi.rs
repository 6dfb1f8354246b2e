//! The OpenAPI 3 document, generated from the handlers and their types, served at
//! `/api-docs/openapi.json` with a Swagger UI at `/docs`.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
                       is `{\"error\": {\"code\", \"message\", \"details\"}}`; money is integer minor units."
    ),
    paths(
        store::create_product, store::product, store::stock, store::inbound, store::movements,
        order::routes::place, order::routes::list, order::routes::order, order::routes::watch,
        order::routes::cancel, order::routes::ship, order::routes::deliver,
        admin::dead_letters, admin::replay, admin::audit,
        admin::consumer_dead_letters, admin::replay_consumer, admin::discard_consumer,
        ops::health, ops::ready, ops::metrics,
    ),
    components(schemas(ErrorBody, ErrorObject)),
    modifiers(&BearerAuth),
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

/// `/api-docs/openapi.json` and the Swagger UI at `/docs`.
pub fn router() -> Router {
    Router::new().merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", ApiDoc::openapi()))
}
