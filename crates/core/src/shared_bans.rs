//! Exchanges the ban list with the other nodes on this store: bans this
//! node imposes are written to the store's `bans` table, and every node
//! reads the running bans back into its own list (which the accept loops
//! ask without a database round trip). A ban made on one node so holds on
//! every node within [`BAN_SYNC`]; a lift on one node ends it everywhere.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dropgate_store::StoredBan;
use tokio_util::sync::CancellationToken;

use crate::Gateway;
use crate::admission::{SharedBan, Source};
use crate::share_health::ShareHealth;

/// How often bans are exchanged with the store.
pub const BAN_SYNC: Duration = Duration::from_secs(2);
/// Rounds between sweeps of ended bans from the store.
const SWEEP_EVERY: u32 = 150;

impl Gateway {
    /// Exchanges bans with the store every [`BAN_SYNC`] until `shutdown`.
    /// While the store is unreachable each node goes on with its own list.
    pub async fn share_bans(self: Arc<Self>, shutdown: CancellationToken) {
        let mut health = ShareHealth::new("the ban list", "; this node keeps its own until it can");
        let mut round: u32 = 0;
        loop {
            health.record(self.exchange_bans(round.is_multiple_of(SWEEP_EVERY)).await);
            round = round.wrapping_add(1);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(BAN_SYNC) => {}
            }
        }
    }

    /// One exchange: write this node's new bans, then take the list.
    pub async fn exchange_bans(&self, sweep: bool) -> Result<(), dropgate_store::StoreError> {
        let admission = self.admission();
        for ban in admission.unshared_bans() {
            self.store()
                .put_ban(&StoredBan {
                    source: ban.source.to_string(),
                    failures: ban.failures,
                    banned_at: ban.banned_at,
                    expires_at: ban.expires_at,
                })
                .await?;
            if !admission.ban_shared(ban.source) {
                // Lifted here while it was being written: take it out again,
                // or the next exchange would bring it back.
                self.store()
                    .delete_ban(&ban.source.to_string(), Utc::now())
                    .await?;
            }
        }
        let now = Utc::now();
        if sweep {
            self.store().delete_expired_bans(now).await?;
        }
        let rows = self.store().active_bans(now).await?;
        // A read cut at its limit cannot tell a lift from a row left out.
        let complete = rows.len() < dropgate_store::MAX_BANS_READ;
        let list: Vec<SharedBan> = rows
            .into_iter()
            .filter_map(|b| {
                // Only the form nodes write: a row in any other form could
                // not be lifted (the lift deletes the canonical form).
                let source = b.source.parse::<Source>().ok()?;
                if source.to_string() != b.source {
                    tracing::debug!(row = %b.source, "ban row not in canonical form; ignored");
                    return None;
                }
                Some(SharedBan {
                    source,
                    failures: b.failures,
                    banned_at: b.banned_at,
                    expires_at: b.expires_at,
                })
            })
            .collect();
        admission.merge_shared_bans(&list, now, complete);
        Ok(())
    }

    /// Lifts the ban on `source` on every node: in the store first (a lift
    /// the store did not take would come back with the next exchange), then
    /// here. Whether a ban was running.
    pub async fn lift_ban(&self, source: Source) -> Result<bool, dropgate_store::StoreError> {
        let stored = self
            .store()
            .delete_ban(&source.to_string(), Utc::now())
            .await?;
        let here = self.admission().lift_ban(source);
        Ok(stored || here)
    }
}
