//! How the loops that share state through the store (bans, live sessions,
//! quota counts) report trouble: one warning when a round first fails, one
//! note when a round works again, nothing for the rounds in between (a
//! database outage must not flood the log every two seconds).

use dropgate_store::StoreError;

/// The state of one sharing loop.
pub(crate) struct ShareHealth {
    /// What is shared, for the log lines ("the ban list").
    what: &'static str,
    /// What the node does meanwhile, appended to the warning.
    meanwhile: &'static str,
    failing: bool,
}

impl ShareHealth {
    pub(crate) fn new(what: &'static str, meanwhile: &'static str) -> ShareHealth {
        ShareHealth {
            what,
            meanwhile,
            failing: false,
        }
    }

    /// Records one round's result.
    pub(crate) fn record(&mut self, round: Result<(), StoreError>) {
        match round {
            Ok(()) if self.failing => {
                tracing::info!("{} shared with the store again", self.what);
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                tracing::warn!(error = %e, "cannot share {} with the store{}", self.what, self.meanwhile);
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}
