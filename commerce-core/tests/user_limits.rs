//! Per-user limits on the default placement path (conditional update, one order per
//! transaction); the other strategies run the same scenarios in their own test files.

mod common;

use commerce_core::{ConditionalUpdate, Error, NewOrder, OrderLimits};
use common::user_limits::{self, backordered_units, open_orders};
use common::{product, setup_with_limits};

#[tokio::test]
async fn backordered_units_are_capped() {
    let (_db, commerce) = setup_with_limits(10, ConditionalUpdate, backordered_units()).await;
    user_limits::backordered_units_are_capped(&commerce).await;
}

#[tokio::test]
async fn open_orders_are_capped() {
    let (_db, commerce) = setup_with_limits(10, ConditionalUpdate, open_orders()).await;
    user_limits::open_orders_are_capped(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_backorders_stay_within_the_limit() {
    let (_db, commerce) = setup_with_limits(20, ConditionalUpdate, backordered_units()).await;
    user_limits::concurrent_backorders_stay_within_the_limit(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_stay_within_the_open_limit() {
    let (_db, commerce) = setup_with_limits(20, ConditionalUpdate, open_orders()).await;
    user_limits::concurrent_orders_stay_within_the_open_limit(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeats_of_a_keyed_request_at_the_limit_get_the_first_order() {
    let (_db, commerce) = setup_with_limits(20, ConditionalUpdate, open_orders()).await;
    user_limits::repeats_of_a_keyed_request_at_the_limit_get_the_first_order(&commerce).await;
}

#[tokio::test]
async fn limits_are_off_by_default() {
    let limits = OrderLimits::default();
    assert_eq!(
        (
            limits.max_backordered_units_per_user,
            limits.max_open_orders_per_user
        ),
        (None, None)
    );
    let (_db, commerce) = setup_with_limits(10, ConditionalUpdate, limits).await;
    product(&commerce, 1, 100).await;
    for _ in 0..20 {
        commerce
            .place_order(NewOrder::new("u").line(1, 1))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_error_names_the_limit_for_logs_and_callers() {
    let err = Error::UserLimitExceeded {
        user: "u".to_owned(),
        limit: commerce_core::UserLimit::OpenOrders,
        current: 2,
        requested: 1,
        max: 2,
    };
    assert_eq!(
        err.to_string(),
        "user u may have at most 2 open orders: has 2, asked for 1 more"
    );
    assert_eq!(commerce_core::UserLimit::OpenOrders.as_str(), "open_orders");
    assert_eq!(
        commerce_core::UserLimit::BackorderedUnits.as_str(),
        "backordered_units"
    );
}
