//! What one write transaction accumulates before commit: ledger rows and events.

use std::sync::Arc;

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::event::{CoreEvent, TransactionHook};
use crate::ids::ProductId;
use crate::inventory::LedgerKind;

/// A ledger row to be written by [`TxEffects::flush`].
#[derive(Debug, Clone)]
pub(crate) struct PendingLedgerRow {
    pub(crate) product: ProductId,
    pub(crate) delta: i64,
    pub(crate) kind: LedgerKind,
    pub(crate) reference: Option<String>,
    pub(crate) available_after: i64,
}

/// Ledger rows and events caused by one transaction, written together just before commit.
#[derive(Debug, Default)]
pub(crate) struct TxEffects {
    pub(crate) ledger: Vec<PendingLedgerRow>,
    pub(crate) events: Vec<CoreEvent>,
}

impl TxEffects {
    pub(crate) fn ledger(
        &mut self,
        product: ProductId,
        delta: i64,
        kind: LedgerKind,
        reference: Option<String>,
        available_after: i64,
    ) {
        self.ledger.push(PendingLedgerRow {
            product,
            delta,
            kind,
            reference,
            available_after,
        });
    }

    /// Writes the ledger rows (one statement, in the order they were recorded) and runs the
    /// hooks with the events, all on the transaction's connection.
    pub(crate) async fn flush(self, conn: &mut PgConnection, hooks: &Hooks) -> Result<()> {
        if !self.ledger.is_empty() {
            let n = self.ledger.len();
            let (mut products, mut deltas, mut kinds, mut refs, mut afters) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for row in self.ledger {
                products.push(row.product.0);
                deltas.push(row.delta);
                kinds.push(row.kind.as_str());
                refs.push(row.reference);
                afters.push(row.available_after);
            }
            // UNNEST keeps array order, so ledger ids follow the order of the movements.
            sqlx::query(
                "INSERT INTO commerce.stock_ledger (product_id, delta, kind, reference, available_after) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])",
            )
            .bind(products)
            .bind(deltas)
            .bind(kinds)
            .bind(refs)
            .bind(afters)
            .execute(&mut *conn)
            .await?;
        }
        hooks.run(conn, &self.events).await
    }
}

/// The configured transaction hooks, run in order.
#[derive(Clone, Default)]
pub(crate) struct Hooks(Arc<Vec<Arc<dyn TransactionHook>>>);

impl Hooks {
    pub(crate) fn new(hooks: Vec<Arc<dyn TransactionHook>>) -> Self {
        Self(Arc::new(hooks))
    }

    async fn run(&self, conn: &mut PgConnection, events: &[CoreEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for hook in self.0.iter() {
            hook.before_commit(conn, events)
                .await
                .map_err(Error::Hook)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooks({})", self.0.len())
    }
}
