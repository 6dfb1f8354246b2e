//! What one write transaction accumulates before commit (ledger movements, events, orders
//! whose last waiting line was served), and how it finishes: promote completed orders,
//! append the ledger, run the hooks, commit.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::{Error, Result};
use crate::event::{CoreEvent, TransactionHook};
use crate::ids::{OrderId, ProductId};
use crate::inventory::{self, LedgerKind, Movement};
use crate::order;

/// Ledger movements and events caused by one transaction, and the orders it may have
/// completed, written together just before commit.
#[derive(Debug, Default)]
pub(crate) struct TxEffects {
    movements: Vec<Movement>,
    pub(crate) events: Vec<CoreEvent>,
    /// BACKORDERED orders with a line whose last outstanding unit this transaction served.
    completed_lines: BTreeSet<OrderId>,
}

impl TxEffects {
    /// Records a stock movement for the ledger.
    pub(crate) fn ledger(
        &mut self,
        product: ProductId,
        delta: i64,
        kind: LedgerKind,
        reference: Option<String>,
        available_after: i64,
    ) {
        self.movements.push(Movement {
            product,
            delta,
            kind,
            reference,
            available_after,
        });
    }

    /// Notes that `order` had a backordered line fully served: [`TxEffects::flush`] checks
    /// whether that completed the order.
    pub(crate) fn line_completed(&mut self, order: OrderId) {
        self.completed_lines.insert(order);
    }

    /// Finishes the transaction's writes on its connection: moves the orders it completed
    /// to CREATED, appends the ledger and runs the hooks with the events. Returns the orders
    /// it moved to CREATED.
    ///
    /// The completion check comes last, after every product row the transaction needs is
    /// locked, and locks the candidate orders in ascending id first: two transactions that
    /// each serve one line of the same order (receipts of two products, a cancellation
    /// returning one of them) then check one after the other, and the second one sees the
    /// first one's served line. Checked concurrently, each would still see the other's
    /// queue row and neither would promote the order.
    pub(crate) async fn flush(
        mut self,
        conn: &mut PgConnection,
        hooks: &Hooks,
    ) -> Result<BTreeSet<OrderId>> {
        let completed = std::mem::take(&mut self.completed_lines);
        let promoted = order::promote_completed(conn, &completed, &mut self.events).await?;
        inventory::append_ledger(conn, self.movements).await?;
        hooks.run(conn, &self.events).await?;
        Ok(promoted)
    }
}

/// Commits `tx`. A broken connection while the commit is in flight is
/// [`Error::CommitOutcomeUnknown`]: the server may have committed.
pub(crate) async fn commit(tx: Transaction<'_, Postgres>) -> Result<()> {
    tx.commit().await.map_err(Error::from_commit)
}

/// The configured transaction hooks, run in order.
#[derive(Clone, Default)]
pub(crate) struct Hooks(Arc<Vec<Arc<dyn TransactionHook>>>);

impl Hooks {
    pub(crate) fn new(hooks: Vec<Arc<dyn TransactionHook>>) -> Self {
        Self(Arc::new(hooks))
    }

    pub(crate) async fn run(&self, conn: &mut PgConnection, events: &[CoreEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for hook in self.0.iter() {
            hook.before_commit(conn, events)
                .await
                .map_err(Error::from_hook)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooks({})", self.0.len())
    }
}
