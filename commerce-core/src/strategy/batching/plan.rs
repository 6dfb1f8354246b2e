//! Planning a batch, without the database: first come first served over the product rows
//! the batch saw, and what the product's row will hold once the batch commits.

use std::collections::{BTreeMap, HashMap};

use super::queue::Request;
use crate::error::Error;
use crate::ids::{OrderId, ProductId};
use crate::inventory::Allocation;
use crate::order::{Exposures, OverLimit, ShortagePolicy};

/// A product row as a batch saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) available: i64,
    pub(crate) backordered: i64,
    pub(crate) price: i64,
    /// The stock watch's generation noted before these were read (sold-out fast path).
    pub(crate) generation: Option<u64>,
}

/// The rows of the products a batch touches, by id (ascending: the lock order).
pub(super) type Stock = BTreeMap<ProductId, Figures>;

/// What a batch decided for one request.
pub(super) enum Decision {
    /// Write this order.
    Place { id: OrderId, lines: Vec<Allocation> },
    /// Not enough stock for a line (reject policy).
    Reject {
        product: ProductId,
        requested: i64,
        available: i64,
    },
    /// A line names a product that does not exist.
    Missing(ProductId),
    /// It would take its user past a per-user limit.
    OverLimit(OverLimit),
    /// Its quantity would take the product's figures past what they can hold.
    TooLarge { product: ProductId, quantity: i64 },
    /// Repeats the idempotency key of an earlier request of this batch that is placed:
    /// answered with that order after the commit.
    SameKeyAs(usize),
}

impl Decision {
    /// The error of a request turned away (`None` for one that is written or repeats one).
    pub(super) fn refusal(&self) -> Option<Error> {
        match self {
            Self::Reject {
                product,
                requested,
                available,
            } => Some(Error::InsufficientStock {
                product: *product,
                requested: *requested,
                available: *available,
            }),
            Self::Missing(product) => Some(Error::ProductNotFound { product: *product }),
            Self::OverLimit(over) => Some(over.clone().into()),
            Self::TooLarge { product, quantity } => Some(Error::InvalidQuantity {
                product: Some(*product),
                quantity: *quantity,
                reason: "the product's stock figures cannot hold this quantity on top of what \
                         is already queued",
            }),
            Self::Place { .. } | Self::SameKeyAs(_) => None,
        }
    }
}

/// A batch's decisions, one per request, and what it changes per product.
pub(super) struct Plan {
    pub(super) decisions: Vec<Decision>,
    /// Units taken and queued per product.
    pub(super) changes: BTreeMap<ProductId, (i64, i64)>,
}

impl Plan {
    pub(super) fn writes_nothing(&self) -> bool {
        !self
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Place { .. }))
    }

    /// Whether the batch adds to a backorder queue (whose ids must follow commit order).
    pub(super) fn queues_backorders(&self) -> bool {
        self.changes.values().any(|&(_, queued)| queued > 0)
    }
}

/// First come first served: each request in arrival order takes what it asks for if every
/// line fits (reject policy) or what is left of each line (backorder policy, the rest queued).
/// With `exposures` (per-user limits on), a request that would take its user past a limit
/// is refused and takes nothing, so what it would have taken goes to the requests after it.
/// A request repeating the key of a placed request of the batch is that request's repeat; a
/// key whose first request was turned away does not bind the next one, which is judged on
/// its own (as it would be in a transaction of its own).
pub(super) fn allocate(
    requests: &[Request],
    stock: &Stock,
    mut exposures: Option<&mut Exposures>,
) -> Plan {
    let mut left: BTreeMap<ProductId, i64> = stock.iter().map(|(p, f)| (*p, f.available)).collect();
    // Units queued per product so far: the batch's own plus what the row already holds.
    let mut waiting: BTreeMap<ProductId, i64> =
        stock.iter().map(|(p, f)| (*p, f.backordered)).collect();
    let mut changes: BTreeMap<ProductId, (i64, i64)> = BTreeMap::new();
    let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
    let decisions = requests
        .iter()
        .enumerate()
        .map(|(index, request)| {
            let order = &request.order;
            let key = order.idempotency_key().map(|key| (order.user_id(), key));
            if let Some(first) = key.and_then(|key| keys.get(&key)) {
                return Decision::SameKeyAs(*first);
            }
            let decision = decide(order, &left, &waiting, stock, exposures.as_deref_mut());
            if let Decision::Place { lines, .. } = &decision {
                for take in lines {
                    let shortfall = take.shortfall();
                    left.insert(take.product, take.available_after);
                    *waiting.entry(take.product).or_default() += shortfall;
                    let change = changes.entry(take.product).or_default();
                    change.0 += take.allocated;
                    change.1 += shortfall;
                }
                if let Some(key) = key {
                    keys.insert(key, index);
                }
            }
            decision
        })
        .collect();
    Plan { decisions, changes }
}

/// One request's decision on what is `left` and `waiting` per product.
fn decide(
    order: &crate::order::ValidatedOrder,
    left: &BTreeMap<ProductId, i64>,
    waiting: &BTreeMap<ProductId, i64>,
    stock: &Stock,
    exposures: Option<&mut Exposures>,
) -> Decision {
    for line in order.lines() {
        let Some(&available) = left.get(&line.product) else {
            return Decision::Missing(line.product);
        };
        if order.policy() == ShortagePolicy::Reject && line.quantity > available {
            return Decision::Reject {
                product: line.product,
                requested: line.quantity,
                available,
            };
        }
    }
    // Each product appears once per order, so every line can be planned on `left` before
    // any is taken from it.
    let lines: Vec<Allocation> = order
        .lines()
        .iter()
        .map(|line| {
            let available = left.get(&line.product).copied().unwrap_or_default();
            let allocated = line.quantity.min(available);
            Allocation {
                product: line.product,
                quantity: line.quantity,
                allocated,
                available_after: available - allocated,
                unit_price: stock.get(&line.product).map_or(0, |f| f.price),
            }
        })
        .collect();
    // The queue a product's row can hold is an i64: a shortfall beyond it is refused here,
    // for this order alone, rather than failing the batch's update.
    let mut shortfall: i64 = 0;
    for take in &lines {
        let short = take.shortfall();
        let queued = waiting.get(&take.product).copied().unwrap_or_default();
        match (queued.checked_add(short), shortfall.checked_add(short)) {
            (Some(_), Some(sum)) => shortfall = sum,
            _ => {
                return Decision::TooLarge {
                    product: take.product,
                    quantity: take.quantity,
                }
            }
        }
    }
    if let Some(exposures) = exposures {
        if let Err(over) = exposures.admit(order.user_id(), shortfall) {
            return Decision::OverLimit(over);
        }
    }
    Decision::Place {
        id: OrderId::new(),
        lines,
    }
}

/// The figures of `home` after `requests` commit as planned on `known`; `None` when that
/// cannot be told in advance (figures unknown, or orders touching other products).
pub(super) fn predict(
    requests: &[Request],
    home: ProductId,
    known: Option<Figures>,
) -> Option<Figures> {
    let known = known?;
    if requests
        .iter()
        .any(|r| r.order.products().any(|product| product != home))
    {
        return None;
    }
    let plan = allocate(requests, &Stock::from([(home, known)]), None);
    let (taken, queued) = plan.changes.get(&home).copied().unwrap_or_default();
    Some(Figures {
        available: known.available.checked_sub(taken)?,
        backordered: known.backordered.checked_add(queued)?,
        ..known
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{NewOrder, OrderLimits, ValidatedOrder};
    use std::time::Instant;

    fn request(user: &str, quantity: i64, policy: ShortagePolicy, key: Option<&str>) -> Request {
        let mut order = NewOrder::new(user).line(1, quantity).policy(policy);
        if let Some(key) = key {
            order = order.idempotency_key(key);
        }
        let (reply, _) = tokio::sync::oneshot::channel();
        let limits = OrderLimits {
            max_quantity: i64::MAX,
            ..OrderLimits::default()
        };
        Request {
            order: ValidatedOrder::new(order, &limits).unwrap(),
            reply,
            queued_at: Instant::now(),
            trace: None,
        }
    }

    fn stock(available: &[(i64, i64)]) -> Stock {
        available
            .iter()
            .map(|&(product, available)| {
                (
                    ProductId(product),
                    Figures {
                        available,
                        backordered: 0,
                        price: 100,
                        generation: None,
                    },
                )
            })
            .collect()
    }

    fn describe(decision: &Decision) -> String {
        match decision {
            Decision::Place { lines, .. } => lines
                .iter()
                .map(|t| format!("place {} -> {}", t.allocated, t.available_after))
                .collect::<Vec<_>>()
                .join(", "),
            Decision::Reject { available, .. } => format!("reject at {available}"),
            Decision::Missing(p) => format!("missing {p}"),
            Decision::OverLimit(over) => format!("over limit {over:?}"),
            Decision::TooLarge { quantity, .. } => format!("too large {quantity}"),
            Decision::SameKeyAs(i) => format!("same as {i}"),
        }
    }

    #[test]
    fn an_order_of_several_lines_is_placed_whole_or_turned_away_at_its_short_line() {
        let order = |user: &str, a: i64, b: i64, policy| {
            let (reply, _) = tokio::sync::oneshot::channel();
            Request {
                order: ValidatedOrder::new(
                    NewOrder::new(user).line(1, a).line(2, b).policy(policy),
                    &OrderLimits::default(),
                )
                .unwrap(),
                reply,
                queued_at: Instant::now(),
                trace: None,
            }
        };
        let requests = [
            order("a", 2, 3, ShortagePolicy::Reject),
            order("b", 1, 3, ShortagePolicy::Reject), // product 2 has 2 left
            order("c", 1, 3, ShortagePolicy::Backorder),
        ];
        let plan = allocate(&requests, &stock(&[(1, 5), (2, 5)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(
            summary,
            [
                "place 2 -> 3, place 3 -> 2",
                "reject at 2",
                "place 1 -> 2, place 2 -> 0"
            ]
        );
        assert_eq!(plan.changes[&ProductId(1)], (3, 0));
        assert_eq!(plan.changes[&ProductId(2)], (5, 1));
    }

    #[test]
    fn first_come_first_served_and_exactly_what_does_not_fit_is_turned_away() {
        use ShortagePolicy::{Backorder, Reject};
        let requests = [
            request("a", 3, Reject, None),
            request("b", 4, Reject, None), // 2 left: does not fit
            request("c", 2, Reject, None), // fits
            request("d", 1, Backorder, None),
            request("e", 1, Reject, None),
        ];
        let plan = allocate(&requests, &stock(&[(1, 5)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(
            summary,
            [
                "place 3 -> 2",
                "reject at 2",
                "place 2 -> 0",
                "place 0 -> 0",
                "reject at 0"
            ]
        );
        assert_eq!(plan.changes[&ProductId(1)], (5, 1));
        assert!(!plan.writes_nothing());
    }

    #[test]
    fn a_repeated_key_in_a_batch_points_at_its_first_request() {
        use ShortagePolicy::Reject;
        let requests = [
            request("a", 1, Reject, Some("k")),
            request("b", 1, Reject, Some("k")),
            request("a", 1, Reject, Some("k")),
        ];
        let plan = allocate(&requests, &stock(&[(1, 10)]), None);
        assert!(matches!(plan.decisions[2], Decision::SameKeyAs(0)));
        assert_eq!(plan.changes[&ProductId(1)], (2, 0));
    }

    #[test]
    fn a_request_over_its_users_limit_takes_nothing_and_the_next_gets_the_stock() {
        use ShortagePolicy::{Backorder, Reject};
        // At most 1 open order per user; "a" has one already.
        let mut open = Exposures::counted(None, Some(1), &[("a", 1, 0)]);
        let requests = [
            request("a", 2, Reject, None),
            request("b", 2, Reject, None),
            request("b", 1, Backorder, None), // b's second order
            request("c", 1, Backorder, None),
        ];
        let plan = allocate(&requests, &stock(&[(1, 2)]), Some(&mut open));
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert!(summary[0].starts_with("over limit"), "{summary:?}");
        assert_eq!(
            summary[1..],
            ["place 2 -> 0", summary[2].as_str(), "place 0 -> 0"]
        );
        assert!(summary[2].contains("OpenOrders"), "{summary:?}");
        assert_eq!(plan.changes[&ProductId(1)], (2, 1));

        // At most 3 units waiting per user: the shortfall counts, in arrival order.
        let mut waiting = Exposures::counted(Some(3), None, &[]);
        let requests = [
            request("a", 4, Backorder, None), // takes 2, waits for 2
            request("a", 2, Backorder, None), // would wait for 4
            request("a", 1, Backorder, None), // waits for 3: at the limit
        ];
        let plan = allocate(&requests, &stock(&[(1, 2)]), Some(&mut waiting));
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(summary[0], "place 2 -> 0");
        assert!(
            summary[1].contains("BackorderedUnits")
                && summary[1].contains("current: 2, requested: 2"),
            "{summary:?}"
        );
        assert_eq!(summary[2], "place 0 -> 0");
        assert_eq!(plan.changes[&ProductId(1)], (2, 3));
    }

    #[test]
    fn a_batch_of_rejections_writes_nothing() {
        let requests = [request("a", 2, ShortagePolicy::Reject, None)];
        assert!(allocate(&requests, &stock(&[(1, 1)]), None).writes_nothing());
        let missing = allocate(&requests, &stock(&[]), None);
        assert!(matches!(
            missing.decisions[0],
            Decision::Missing(ProductId(1))
        ));
    }

    #[test]
    fn a_key_whose_first_request_was_turned_away_does_not_bind_the_next() {
        use ShortagePolicy::Reject;
        let requests = [
            request("u", 5, Reject, Some("k")), // does not fit: 2 left
            request("u", 1, Reject, Some("k")), // judged on its own: fits
            request("u", 1, Reject, Some("k")), // a repeat of the placed one
        ];
        let plan = allocate(&requests, &stock(&[(1, 2)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(summary, ["reject at 2", "place 1 -> 1", "same as 1"]);
        assert_eq!(plan.changes[&ProductId(1)], (1, 0));
    }

    #[test]
    fn a_shortfall_the_figures_cannot_hold_refuses_that_order_alone() {
        use ShortagePolicy::Backorder;
        let huge = i64::MAX / 2 + 1;
        let requests = [
            request("a", huge, Backorder, None),
            request("b", huge, Backorder, None), // the queue would pass i64::MAX
            request("c", 1, Backorder, None),
        ];
        let plan = allocate(&requests, &stock(&[(1, 0)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(
            summary,
            [
                "place 0 -> 0",
                format!("too large {huge}").as_str(),
                "place 0 -> 0"
            ]
        );
        assert_eq!(plan.changes[&ProductId(1)], (0, huge + 1));
        let known = stock(&[(1, 0)])[&ProductId(1)];
        assert_eq!(
            predict(&requests, ProductId(1), Some(known)).map(|f| f.backordered),
            Some(huge + 1)
        );
    }
}
