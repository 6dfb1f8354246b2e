//! Waking the workers when a transaction that enqueued events commits (`LISTEN`).

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::enqueue::NOTIFY_CHANNEL;
use crate::shutdown::sleep_or_shutdown;

/// Bumps `wake` on every notification, and whenever notifications may have been lost (at
/// each (re)connection), until shutdown. While the connection is down the workers poll.
pub(super) async fn listen_for_commits(
    shared: Arc<Shared>,
    wake: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let backoff = shared.config.broker_backoff;
    let mut failures = 0_u32;
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut listener = PgListener::connect_with(&shared.config.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff.delay_with_random_jitter(failures);
                tracing::warn!(relay = %shared.config.name, %error, ?delay, "outbox LISTEN failed; polling only until it reconnects");
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        // Commits may have happened while (re)connecting.
        wake.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    // `None`: the connection dropped (notifications may be lost); the next
                    // call reconnects.
                    Ok(_) => wake.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(error) => {
                        tracing::warn!(relay = %shared.config.name, %error, "outbox LISTEN connection failed; reconnecting");
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                        break;
                    }
                },
            }
        }
    }
}
