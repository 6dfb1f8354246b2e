//! commerce-core in one sitting: products, orders under both shortage policies, a receipt
//! serving the backorder queue, a cancellation, the ledger and the audit.
//!
//! ```text
//! cargo run -p commerce-examples --bin core-orders
//! ```
//! Uses its own database `commerce_example_core` on the `DATABASE_URL` server.

use commerce_core::{Commerce, NewOrder, NewProduct, OrderStatus, ProductId, ShortagePolicy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_examples::init_tracing();
    let pool = commerce_examples::fresh_database("commerce_example_core", 5).await?;
    let commerce = Commerce::builder(pool).build();

    let lamp = ProductId(1);
    commerce
        .create_product(NewProduct::new(lamp, "Desk lamp").stock(3))
        .await?;
    println!("stock: {:?}", commerce.stock(lamp).await?);

    let first = commerce
        .place_order(
            NewOrder::new("alice")
                .line(lamp, 2)
                .idempotency_key("cart-1"),
        )
        .await?;
    println!("alice's order {} is {}", first.order.id, first.order.status);
    let repeat = commerce
        .place_order(
            NewOrder::new("alice")
                .line(lamp, 2)
                .idempotency_key("cart-1"),
        )
        .await?;
    println!(
        "a repeat of the request returns the same order: {}",
        repeat.order.id == first.order.id
    );

    match commerce
        .place_order(NewOrder::new("bob").line(lamp, 5))
        .await
    {
        Err(e) => println!("bob's order is rejected: {e}"),
        Ok(placed) => println!("unexpected: bob's order {} went through", placed.order.id),
    }
    let waiting = commerce
        .place_order(
            NewOrder::new("bob")
                .line(lamp, 5)
                .policy(ShortagePolicy::Backorder),
        )
        .await?;
    println!(
        "bob's backorder {} is {} with {} of 5 allocated",
        waiting.order.id, waiting.order.status, waiting.order.lines[0].allocated
    );

    let receipt = commerce.receive_stock(lamp, 10, Some("PO-2026-11")).await?;
    for a in &receipt.allocations {
        println!(
            "receipt allocated {} to order {} (created now: {})",
            a.quantity, a.order, a.order_created
        );
    }
    commerce
        .transition_order(first.order.id, OrderStatus::Processing, "payment captured")
        .await?;
    commerce
        .cancel_order(first.order.id, "customer changed their mind")
        .await?;

    println!("ledger of the lamp, newest first:");
    for entry in commerce.ledger(lamp, None, 20).await?.entries {
        println!(
            "  #{:<3} {:<8} {:>+4} -> {:>3}  {}",
            entry.id,
            entry.kind,
            entry.delta,
            entry.available_after,
            entry.reference.unwrap_or_default()
        );
    }
    println!("stock now: {:?}", commerce.stock(lamp).await?);
    let audit = commerce.audit().await?;
    println!(
        "audit: {} products, {} orders, consistent: {}",
        audit.products,
        audit.orders,
        audit.is_consistent()
    );
    Ok(())
}
