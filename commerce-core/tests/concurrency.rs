//! The flash-sale concurrency test against the default strategy (conditional update).

mod common;

use common::{flash_sale, setup_with_pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_attempts_on_one_product_sell_exactly_the_stock() {
    let (_db, commerce) = setup_with_pool(40).await;
    flash_sale::ten_thousand_attempts_on_one_product(&commerce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_multi_line_attempts_over_ten_products_never_oversell() {
    let (_db, commerce) = setup_with_pool(40).await;
    flash_sale::ten_thousand_multi_line_attempts(&commerce).await;
}
