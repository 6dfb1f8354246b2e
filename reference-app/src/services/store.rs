//! The store service: the catalogue (read through the two-level cache), stock, inbound stock
//! and the stock ledger.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use commerce_core::{Commerce, NewProduct, Product, ProductId, StockLevel};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Admin, Auth, Caller};
use crate::catalog::Catalog;
use crate::http::extract::{Json, Path, Query};
use crate::http::{ApiError, ApiResult, ErrorBody};

/// What the store service needs.
#[derive(Debug, Clone, FromRef)]
pub struct StoreState {
    /// Stock and the ledger.
    pub commerce: Commerce,
    /// Catalogue facts, cached.
    pub catalog: Catalog,
    /// Token checks.
    pub auth: Auth,
    /// For product ids.
    pub pool: PgPool,
}

/// The store's routes.
pub fn router(state: StoreState) -> Router {
    Router::new()
        .route("/api/v1/products", post(create_product))
        .route("/api/v1/products/{id}", get(product))
        .route("/api/v1/products/{id}/stock", get(stock))
        .route("/api/v1/products/{id}/inbound", post(inbound))
        .route("/api/v1/products/{id}/movements", get(movements))
        .with_state(state)
}

/// A product to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit, unique.
    #[schema(example = "KET-01")]
    pub sku: String,
    /// Display name.
    #[schema(example = "Kettle")]
    pub name: String,
    /// Unit price in minor units (cents).
    #[schema(example = 3999)]
    pub price: i64,
    /// Units in stock at creation.
    #[serde(default)]
    #[schema(example = 100)]
    pub initial_stock: i64,
}

/// A product with its current stock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    /// Its id.
    pub id: i64,
    /// Stock-keeping unit.
    pub sku: Option<String>,
    /// Display name.
    pub name: String,
    /// Unit price in minor units.
    pub price: i64,
    /// Units free to be ordered now.
    pub available: i64,
    /// Units ordered and waiting for stock.
    pub backordered: i64,
}

impl ProductView {
    fn of(product: &Product, stock: StockLevel) -> Self {
        Self {
            id: product.id.0,
            sku: product.sku.clone(),
            name: product.name.clone(),
            price: product.price,
            available: stock.available,
            backordered: stock.backordered,
        }
    }
}

/// A product's stock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockView {
    /// The product.
    pub product_id: i64,
    /// Units free to be ordered now.
    pub available: i64,
    /// Units ordered and waiting for stock.
    pub backordered: i64,
}

impl From<StockLevel> for StockView {
    fn from(s: StockLevel) -> Self {
        Self {
            product_id: s.product.0,
            available: s.available,
            backordered: s.backordered,
        }
    }
}

/// Arriving stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Units received.
    #[schema(example = 50)]
    pub quantity: i64,
    /// A reference kept in the ledger (delivery note, purchase order).
    #[serde(default)]
    #[schema(example = "PO-1234")]
    pub note: Option<String>,
}

/// What a receipt did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InboundView {
    /// The product.
    pub product_id: i64,
    /// Units free after the receipt (and after serving backorders).
    pub available: i64,
    /// Units still waiting for stock.
    pub backordered: i64,
    /// Backordered orders this receipt gave stock to, oldest first.
    pub allocated_order_ids: Vec<uuid::Uuid>,
}

/// Paging of the ledger.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MovementsQuery {
    /// Entries per page, 1 to 1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// One stock movement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementView {
    /// Its position in the ledger.
    pub id: i64,
    /// `inbound`, `order`, `cancel` or `adjust`.
    pub kind: String,
    /// Units in (positive) or out (negative).
    pub delta: i64,
    /// `available` right after the movement.
    pub available_after: i64,
    /// The order it belongs to (`order` and `cancel` movements).
    pub order_id: Option<String>,
    /// The reference or reason (other movements).
    pub note: Option<String>,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A page of the ledger, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementsPage {
    /// The movements.
    pub items: Vec<MovementView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<i64>,
}

async fn product_or_404(catalog: &Catalog, id: i64) -> ApiResult<Product> {
    catalog.product(ProductId(id)).await?.ok_or_else(|| {
        ApiError::from(commerce_core::Error::ProductNotFound {
            product: ProductId(id),
        })
    })
}

/// Creates a product with its initial stock.
#[utoipa::path(
    post, path = "/api/v1/products", tag = "store",
    request_body = CreateProduct,
    responses(
        (status = 201, description = "created", body = ProductView),
        (status = 409, description = "`sku_taken`", body = ErrorBody),
        (status = 422, description = "`validation_failed`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_product(
    State(state): State<StoreState>,
    _admin: Admin,
    Json(body): Json<CreateProduct>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    if body.sku.trim().is_empty() {
        return Err(ApiError::validation("sku must not be empty")
            .details(serde_json::json!({"field": "sku"})));
    }
    // Ids come from the store's own sequence; one already taken (created outside this
    // service) is skipped.
    for _ in 0..5 {
        let id: i64 = sqlx::query_scalar("SELECT nextval('store.product_ids')")
            .fetch_one(&state.pool)
            .await
            .map_err(commerce_core::Error::from)?;
        let new = NewProduct::new(ProductId(id), body.name.clone())
            .sku(body.sku.clone())
            .price(body.price)
            .stock(body.initial_stock);
        match state.catalog.create(new).await {
            Ok(stock) => {
                let product = product_or_404(&state.catalog, id).await?;
                return Ok((StatusCode::CREATED, Json(ProductView::of(&product, stock))));
            }
            Err(commerce_core::Error::ProductAlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("no free product id after 5 tries"))
}

/// A product with its current stock (catalogue facts cached, stock always fresh).
#[utoipa::path(
    get, path = "/api/v1/products/{id}", tag = "store",
    params(("id" = i64, Path, description = "product id")),
    responses(
        (status = 200, body = ProductView),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn product(
    State(state): State<StoreState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<ProductView>> {
    let product = product_or_404(&state.catalog, id).await?;
    let stock = state.commerce.stock(ProductId(id)).await?;
    Ok(Json(ProductView::of(&product, stock)))
}

/// A product's current stock.
#[utoipa::path(
    get, path = "/api/v1/products/{id}/stock", tag = "store",
    params(("id" = i64, Path, description = "product id")),
    responses(
        (status = 200, body = StockView),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stock(
    State(state): State<StoreState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<StockView>> {
    Ok(Json(state.commerce.stock(ProductId(id)).await?.into()))
}

/// Records arriving stock; it serves the oldest backorders first.
#[utoipa::path(
    post, path = "/api/v1/products/{id}/inbound", tag = "store",
    params(("id" = i64, Path, description = "product id")),
    request_body = Inbound,
    responses(
        (status = 200, body = InboundView),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn inbound(
    State(state): State<StoreState>,
    _admin: Admin,
    Path(id): Path<i64>,
    Json(body): Json<Inbound>,
) -> ApiResult<Json<InboundView>> {
    let receipt = state
        .commerce
        .receive_stock(ProductId(id), body.quantity, body.note.as_deref())
        .await?;
    let mut allocated: Vec<uuid::Uuid> = Vec::new();
    for allocation in &receipt.allocations {
        if !allocated.contains(&allocation.order.0) {
            allocated.push(allocation.order.0);
        }
    }
    Ok(Json(InboundView {
        product_id: id,
        available: receipt.stock.available,
        backordered: receipt.stock.backordered,
        allocated_order_ids: allocated,
    }))
}

/// A page of the product's stock ledger, newest first.
#[utoipa::path(
    get, path = "/api/v1/products/{id}/movements", tag = "store",
    params(("id" = i64, Path, description = "product id"), MovementsQuery),
    responses(
        (status = 200, body = MovementsPage),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn movements(
    State(state): State<StoreState>,
    _admin: Admin,
    Path(id): Path<i64>,
    Query(query): Query<MovementsQuery>,
) -> ApiResult<Json<MovementsPage>> {
    // The ledger of an unknown product is a 404, not an empty page.
    state.commerce.stock(ProductId(id)).await?;
    let page = state
        .commerce
        .ledger(ProductId(id), query.cursor, query.limit.unwrap_or(50))
        .await?;
    let items = page
        .entries
        .into_iter()
        .map(|e| {
            let is_order = matches!(
                e.kind,
                commerce_core::LedgerKind::Order | commerce_core::LedgerKind::Cancel
            );
            MovementView {
                id: e.id,
                kind: e.kind.as_str().to_owned(),
                delta: e.delta,
                available_after: e.available_after,
                order_id: if is_order { e.reference.clone() } else { None },
                note: if is_order { None } else { e.reference },
                at: e.at,
            }
        })
        .collect();
    Ok(Json(MovementsPage {
        items,
        next_cursor: page.next_before,
    }))
}
