//! The locks in force, read once for all of an agent's sessions: each session waits on a
//! watch and checks its identity when the locks change, instead of reading them itself
//! every second (which cost a store read, or a request to the proxy for a remote agent, per
//! session per second).

use std::sync::{Arc, Weak};
use std::time::Duration;

use mcpgate_types::resource::Lock;
use tokio::sync::watch;

use crate::cluster::Cluster;

/// The locks as last read, or why they could not be read (sessions then end: fail closed).
pub(crate) type Locks = Result<Arc<Vec<Lock>>, String>;

/// How often the locks are read again, for those set by another auth instance (a lock set
/// in this process is seen within [`EPOCH_CHECK`]): a lock ends sessions well within 5 s.
const LOCK_CHECK: Duration = Duration::from_secs(1);
/// How often the cluster's change counter is looked at between reads.
const EPOCH_CHECK: Duration = Duration::from_millis(50);

/// The shared view: started with the first session that watches, ended when the agent is.
#[derive(Default)]
pub(crate) struct LockView(std::sync::OnceLock<watch::Receiver<Locks>>);

impl LockView {
    /// A receiver whose first `changed()` returns the locks once they have been read.
    pub(crate) fn watch(&self, cluster: &Arc<dyn Cluster>) -> watch::Receiver<Locks> {
        self.0
            .get_or_init(|| {
                let (tx, rx) = watch::channel(Ok(Arc::default()));
                tokio::spawn(refresh(Arc::downgrade(cluster), tx));
                rx
            })
            .clone()
    }
}

async fn refresh(cluster: Weak<dyn Cluster>, tx: watch::Sender<Locks>) {
    let mut first = true;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let epoch = c.epoch();
        let now = c.locks().await.map(Arc::new);
        if first {
            let _ = tx.send_replace(now);
            first = false;
        } else {
            tx.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
        }
        // Until the next read: a change in this process reads again at once.
        let mut waited = Duration::ZERO;
        while waited < LOCK_CHECK && c.epoch() == epoch {
            tokio::select! {
                _ = tokio::time::sleep(EPOCH_CHECK) => waited += EPOCH_CHECK,
                _ = tx.closed() => return,
            }
        }
    }
}
