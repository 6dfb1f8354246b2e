//! Property test: random sequences of receipts, orders (both policies), cancellations,
//! adjustments and transitions, checked step by step against an in-memory model and the
//! audit's invariants (available >= 0, available == ledger sum, lines match ledger rows,
//! backorders served FIFO).

mod common;

use std::collections::{HashMap, VecDeque};

use commerce_core::{Commerce, Error, NewOrder, OrderId, OrderStatus, ProductId, ShortagePolicy};
use proptest::prelude::*;

const PRODUCTS: i64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Receive {
        product: i64,
        quantity: i64,
    },
    Adjust {
        product: i64,
        delta: i64,
    },
    Place {
        lines: Vec<(i64, i64)>,
        policy: ShortagePolicy,
    },
    Cancel {
        order: usize,
    },
    Transition {
        order: usize,
        to: OrderStatus,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let product = 1..=PRODUCTS;
    prop_oneof![
        2 => (product.clone(), 1..6_i64).prop_map(|(product, quantity)| Op::Receive { product, quantity }),
        1 => (product.clone(), -3..4_i64)
            .prop_filter("non-zero", |(_, d)| *d != 0)
            .prop_map(|(product, delta)| Op::Adjust { product, delta }),
        4 => (
            proptest::sample::subsequence((1..=PRODUCTS).collect::<Vec<_>>(), 1..=PRODUCTS as usize),
            proptest::collection::vec(1..4_i64, PRODUCTS as usize),
            prop::bool::ANY,
        )
            .prop_map(|(products, quantities, backorder)| Op::Place {
                lines: products.into_iter().zip(quantities).collect(),
                policy: if backorder { ShortagePolicy::Backorder } else { ShortagePolicy::Reject },
            }),
        2 => (0..20_usize).prop_map(|order| Op::Cancel { order }),
        2 => (0..20_usize, proptest::sample::select(OrderStatus::ALL.to_vec()))
            .prop_map(|(order, to)| Op::Transition { order, to }),
    ]
}

#[derive(Debug, Default)]
struct ModelOrder {
    id: Option<OrderId>,
    status: Option<OrderStatus>,
    /// (product, quantity, allocated)
    lines: Vec<(i64, i64, i64)>,
}

/// What the database must show, computed independently of it.
#[derive(Debug, Default)]
struct Model {
    available: HashMap<i64, i64>,
    queue: HashMap<i64, VecDeque<(usize, i64)>>,
    orders: Vec<ModelOrder>,
}

impl Model {
    fn backordered(&self, product: i64) -> i64 {
        self.queue
            .get(&product)
            .map_or(0, |q| q.iter().map(|(_, n)| n).sum())
    }

    /// Serves the product's queue, oldest first.
    fn allocate(&mut self, product: i64) {
        loop {
            let available = self.available.entry(product).or_default();
            let queue = self.queue.entry(product).or_default();
            let Some((order, outstanding)) = queue.front_mut() else {
                break;
            };
            if *available == 0 {
                break;
            }
            let take = (*available).min(*outstanding);
            *available -= take;
            *outstanding -= take;
            let (order, done) = (*order, *outstanding == 0);
            if done {
                queue.pop_front();
            }
            let line = self.orders[order]
                .lines
                .iter_mut()
                .find(|l| l.0 == product)
                .unwrap();
            line.2 += take;
            if done
                && !self
                    .queue
                    .values()
                    .any(|q| q.iter().any(|(o, _)| *o == order))
            {
                self.orders[order].status = Some(OrderStatus::Created);
            }
        }
    }
}

async fn apply(commerce: &Commerce, model: &mut Model, op: &Op) {
    match op {
        Op::Receive { product, quantity } => {
            commerce
                .receive_stock(ProductId(*product), *quantity, None)
                .await
                .unwrap();
            *model.available.entry(*product).or_default() += quantity;
            model.allocate(*product);
        }
        Op::Adjust { product, delta } => {
            let result = commerce
                .adjust_stock(ProductId(*product), *delta, "count")
                .await;
            let available = model.available.entry(*product).or_default();
            if *available + delta < 0 {
                assert!(
                    matches!(result, Err(Error::InsufficientStock { .. })),
                    "{result:?}"
                );
            } else {
                result.unwrap();
                *available += delta;
                if *delta > 0 {
                    model.allocate(*product);
                }
            }
        }
        Op::Place { lines, policy } => {
            let request = lines
                .iter()
                .fold(NewOrder::new("prop"), |o, &(p, q)| o.line(p, q))
                .policy(*policy);
            let result = commerce.place_order(request).await;
            let mut sorted = lines.clone();
            sorted.sort_unstable();
            let short = sorted.iter().find(|(p, q)| model.available[p] < *q);
            if let (ShortagePolicy::Reject, Some((p, q))) = (policy, short) {
                assert!(
                    matches!(result, Err(Error::InsufficientStock { product, requested, .. })
                        if product == ProductId(*p) && requested == *q),
                    "{result:?}"
                );
                return;
            }
            let placed = result.unwrap().order;
            let index = model.orders.len();
            let mut order = ModelOrder {
                id: Some(placed.id),
                ..ModelOrder::default()
            };
            for (p, q) in sorted {
                let available = model.available.get_mut(&p).unwrap();
                let take = (*available).min(q);
                *available -= take;
                if take < q {
                    model
                        .queue
                        .entry(p)
                        .or_default()
                        .push_back((index, q - take));
                }
                order.lines.push((p, q, take));
            }
            let waiting = order.lines.iter().any(|l| l.2 < l.1);
            order.status = Some(if waiting {
                OrderStatus::Backordered
            } else {
                OrderStatus::Created
            });
            assert_eq!(placed.status, order.status.unwrap());
            model.orders.push(order);
        }
        Op::Cancel { order }
        | Op::Transition {
            order,
            to: OrderStatus::Cancelled,
        } => {
            let Some(target) = model.orders.get(*order) else {
                return;
            };
            let (id, status) = (target.id.unwrap(), target.status.unwrap());
            let result = commerce.cancel_order(id, "prop").await;
            if !status.can_transition_to(OrderStatus::Cancelled) {
                assert!(
                    matches!(result, Err(Error::IllegalTransition { .. })),
                    "{result:?}"
                );
                return;
            }
            result.unwrap();
            let lines = model.orders[*order].lines.clone();
            for queue in model.queue.values_mut() {
                queue.retain(|(o, _)| o != order);
            }
            model.orders[*order].status = Some(OrderStatus::Cancelled);
            for (p, _, allocated) in &lines {
                *model.available.get_mut(p).unwrap() += allocated;
            }
            for (p, _, _) in lines {
                model.allocate(p);
            }
        }
        Op::Transition { order, to } => {
            let Some(target) = model.orders.get(*order) else {
                return;
            };
            let (id, status) = (target.id.unwrap(), target.status.unwrap());
            let result = commerce.transition_order(id, *to, "prop").await;
            if status.can_transition_to(*to) {
                result.unwrap();
                model.orders[*order].status = Some(*to);
            } else {
                assert!(
                    matches!(result, Err(Error::IllegalTransition { .. })),
                    "{result:?}"
                );
            }
        }
    }
}

async fn assert_matches_model(commerce: &Commerce, model: &Model) {
    for p in 1..=PRODUCTS {
        let stock = commerce.stock(ProductId(p)).await.unwrap();
        assert_eq!(stock.available, model.available[&p], "available of {p}");
        assert_eq!(
            stock.backordered,
            model.backordered(p),
            "backordered of {p}"
        );
        let queue: Vec<(OrderId, i64)> = commerce
            .backorders(ProductId(p))
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.order, b.outstanding))
            .collect();
        let expected: Vec<(OrderId, i64)> = model
            .queue
            .get(&p)
            .map(|q| {
                q.iter()
                    .map(|(o, n)| (model.orders[*o].id.unwrap(), *n))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(queue, expected, "FIFO queue of {p}");
    }
    for order in &model.orders {
        let stored = commerce.order(order.id.unwrap()).await.unwrap();
        assert_eq!(Some(stored.status), order.status);
        let lines: Vec<(i64, i64, i64)> = stored
            .lines
            .iter()
            .map(|l| (l.product.0, l.quantity, l.allocated))
            .collect();
        assert_eq!(lines, order.lines);
    }
    common::assert_consistent(commerce).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_the_invariants(
        initial in proptest::collection::vec(0..5_i64, PRODUCTS as usize),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (_db, commerce) = common::setup().await;
            let mut model = Model::default();
            for (i, stock) in initial.iter().enumerate() {
                let id = i as i64 + 1;
                common::product(&commerce, id, *stock).await;
                model.available.insert(id, *stock);
            }
            for op in &ops {
                apply(&commerce, &mut model, op).await;
                assert_matches_model(&commerce, &model).await;
            }
        });
    }
}
