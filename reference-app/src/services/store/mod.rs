//! The store service: the catalogue (read through the two-level cache), stock, inbound stock
//! and the stock ledger.

pub mod catalog;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use commerce_client::{
    CreateProduct, Inbound, InboundView, MovementKind, MovementView, MovementsPage, MovementsQuery,
    ProductView, RenameProduct, StockView, MAX_SKU_LEN, MAX_TEXT_CHARS,
};
use commerce_core::{Commerce, Product, ProductId, StockLevel};

use self::catalog::Catalog;
use crate::auth::{Admin, Auth, Caller};
use crate::http::extract::{Json, Path, Query};
use crate::http::{page_limit, ApiError, ApiResult, ErrorBody};

/// What the store service needs.
#[derive(Debug, Clone, FromRef)]
pub struct StoreState {
    /// Stock and the ledger.
    pub commerce: Commerce,
    /// Catalogue facts, cached.
    pub catalog: Catalog,
    /// Token checks.
    pub auth: Auth,
}

/// Most ledger entries on one page.
const MAX_LEDGER_PAGE: u32 = 1000;

/// The store's routes.
pub fn router(state: StoreState) -> Router {
    Router::new()
        .route("/api/v1/products", post(create_product))
        .route("/api/v1/products/{id}", get(product).patch(rename_product))
        .route("/api/v1/products/{id}/stock", get(stock))
        .route("/api/v1/products/{id}/inbound", post(inbound))
        .route("/api/v1/products/{id}/movements", get(movements))
        .with_state(state)
}

fn product_view(product: &Product, stock: StockLevel) -> ProductView {
    ProductView {
        id: product.id.0,
        sku: product.sku.clone(),
        name: product.name.clone(),
        price: product.price,
        available: stock.available,
        backordered: stock.backordered,
    }
}

fn stock_view(stock: StockLevel) -> StockView {
    StockView {
        product_id: stock.product.0,
        available: stock.available,
        backordered: stock.backordered,
    }
}

/// Checks a text field against the limits the API documents (in characters, which JSON
/// Schema counts; they fit commerce-core's limits in bytes, which it checks again).
fn check_text(field: &'static str, value: &str, ascii: bool) -> ApiResult<()> {
    let max = if ascii { MAX_SKU_LEN } else { MAX_TEXT_CHARS };
    let reason = if value.trim().is_empty() {
        "must not be empty or blank"
    } else if value.chars().count() > max {
        "too long"
    } else if ascii && !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        "must be printable ASCII"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(
        ApiError::validation(format!("{field} {reason} (at most {max} characters)"))
            .details(serde_json::json!({ "field": field })),
    )
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
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 409, description = "`sku_taken`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the JSON has the wrong shape or types, or a value is outside its range (details name the field)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_product(
    State(state): State<StoreState>,
    _admin: Admin,
    Json(body): Json<CreateProduct>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    check_text("sku", &body.sku, true)?;
    check_text("name", &body.name, false)?;
    let (id, stock) = state
        .catalog
        .create_with_new_id(&body.name, &body.sku, body.price, body.initial_stock)
        .await?;
    let product = product_or_404(&state.catalog, id.0).await?;
    Ok((StatusCode::CREATED, Json(product_view(&product, stock))))
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
    Ok(Json(product_view(&product, stock)))
}

/// Renames a product; the cached entry is evicted on every instance, so each serves the new
/// name from then on.
#[utoipa::path(
    patch, path = "/api/v1/products/{id}", tag = "store",
    params(("id" = i64, Path, description = "product id")),
    request_body = RenameProduct,
    responses(
        (status = 200, body = ProductView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the JSON has the wrong shape or types, or the name is blank, too long or holds control characters", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rename_product(
    State(state): State<StoreState>,
    _admin: Admin,
    Path(id): Path<i64>,
    Json(body): Json<RenameProduct>,
) -> ApiResult<Json<ProductView>> {
    check_text("name", &body.name, false)?;
    let product = state.catalog.rename(ProductId(id), &body.name).await?;
    let stock = state.commerce.stock(ProductId(id)).await?;
    Ok(Json(product_view(&product, stock)))
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
    Ok(Json(stock_view(state.commerce.stock(ProductId(id)).await?)))
}

/// Records arriving stock; it serves the oldest backorders first.
#[utoipa::path(
    post, path = "/api/v1/products/{id}/inbound", tag = "store",
    params(("id" = i64, Path, description = "product id")),
    request_body = Inbound,
    responses(
        (status = 200, body = InboundView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the JSON has the wrong shape or types, or a value is outside its range", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn inbound(
    State(state): State<StoreState>,
    _admin: Admin,
    Path(id): Path<i64>,
    Json(body): Json<Inbound>,
) -> ApiResult<Json<InboundView>> {
    if let Some(note) = &body.note {
        check_text("note", note, false)?;
    }
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
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
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
    let limit = page_limit(query.limit, 50, MAX_LEDGER_PAGE)?;
    // The ledger of an unknown product is a 404, not an empty page.
    state.commerce.stock(ProductId(id)).await?;
    let page = state
        .commerce
        .ledger(ProductId(id), query.cursor, limit)
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
                kind: match e.kind {
                    commerce_core::LedgerKind::Inbound => MovementKind::Inbound,
                    commerce_core::LedgerKind::Order => MovementKind::Order,
                    commerce_core::LedgerKind::Cancel => MovementKind::Cancel,
                    commerce_core::LedgerKind::Adjust => MovementKind::Adjust,
                },
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
