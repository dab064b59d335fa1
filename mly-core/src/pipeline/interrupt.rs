//! SIGINT / SIGTERM for `sync`: one process-wide flag, set by a listener task and awaited by
//! whoever must stop.
//!
//! Nothing is ever aborted in the middle of a database statement: a query future dropped
//! mid-flight hands a connection with an unfinished exchange back to the pool, and the next
//! statement on it fails ("expected ParseComplete, got ReadyForQuery"). So an interrupt only
//! cancels API calls (see `pipeline::cancellable`); database statements in flight finish, and the
//! run then releases its leases and is marked stopped on healthy connections.

use std::sync::OnceLock;

use tokio::sync::watch;

fn flag() -> &'static watch::Sender<bool> {
    static FLAG: OnceLock<watch::Sender<bool>> = OnceLock::new();
    FLAG.get_or_init(|| watch::channel(false).0)
}

/// Starts listening for SIGINT and SIGTERM (once per process); from then on they set the flag
/// instead of killing the process. Must be called inside the Tokio runtime.
pub fn listen() {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    use tokio::signal::unix::{SignalKind, signal};
    // Registered here, before the task runs, so a signal that arrives right after is not lost.
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    tokio::spawn(async move {
        async fn one(s: Option<tokio::signal::unix::Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(term) => {}
            _ = one(int) => {}
        }
        tracing::warn!("interrupted: stopping; unfinished tiles resume on the next run");
        trigger();
    });
}

/// Sets the flag (the signal listener does; tests may too).
pub fn trigger() {
    flag().send_replace(true);
}

/// Whether SIGINT/SIGTERM has arrived.
pub fn is_set() -> bool {
    *flag().borrow()
}

/// Resolves once SIGINT/SIGTERM has arrived (at once if it already has).
pub async fn wait() {
    let mut rx = flag().subscribe();
    // The sender lives in a static, so the channel never closes and `wait_for` only returns Ok.
    let _ = rx.wait_for(|set| *set).await;
}
