//! `--redis-url`: the engine's shared counters and change notices in Redis
//! ([`kiln_engine::shared`]).
//!
//! Counters are keys `kiln:<key>` counted with `INCR` and given their time to live with
//! `PEXPIRE` in one `MULTI` (each event restarts the clock, as the store's counters do).
//! Notices are published on the channel `kiln:changes` as `<node> <change>`; every node
//! subscribes, skips its own, and applies the rest. When the subscription drops, the node
//! forgets everything it cached (notices may have been missed) and subscribes again, retrying
//! with a growing pause.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use kiln_engine::EngineError;
use kiln_engine::shared::{Change, ChangeHandler, SharedState};
use redis::aio::ConnectionManager;

const CHANNEL: &str = "kiln:changes";
const PREFIX: &str = "kiln:";

pub struct RedisShared {
    client: redis::Client,
    conn: ConnectionManager,
    /// This process, so that it skips its own notices.
    node: String,
}

impl RedisShared {
    /// Connects (and checks with `PING`) so that a wrong URL fails the start, not a request.
    pub async fn connect(url: &str) -> anyhow::Result<RedisShared> {
        let client = redis::Client::open(url)?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
                .await
                .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        let node = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok(RedisShared { client, conn, node })
    }
}

fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Busy(format!("Redis: {e}"))
}

#[async_trait]
impl SharedState for RedisShared {
    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, EngineError> {
        let key = format!("{PREFIX}{key}");
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut conn = self.conn.clone();
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .pexpire(&key, millis)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(count)
    }

    async fn event_count(&self, key: &str) -> Result<u64, EngineError> {
        let mut conn = self.conn.clone();
        let count: Option<u64> = redis::cmd("GET")
            .arg(format!("{PREFIX}{key}"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(count.unwrap_or(0))
    }

    async fn clear_events(&self, key: &str) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{PREFIX}{key}"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn announce(&self, change: &Change) {
        let mut conn = self.conn.clone();
        let message = format!("{} {}", self.node, change.encode());
        let sent: Result<i64, _> =
            redis::cmd("PUBLISH").arg(CHANNEL).arg(message).query_async(&mut conn).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not announce a change through Redis");
        }
    }

    fn subscribe(&self, handler: ChangeHandler) {
        let client = self.client.clone();
        let node = self.node.clone();
        tokio::spawn(listen(client, node, handler));
    }
}

/// Applies other nodes' notices until the process ends, resubscribing after a lost connection.
async fn listen(client: redis::Client, node: String, handler: ChangeHandler) {
    let mut pause = Duration::from_millis(500);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    pause = Duration::from_millis(500);
                    // Whatever was announced while not subscribed is unknown: forget it all.
                    handler(None);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(text) = message.get_payload::<String>() else { continue };
                        let Some((from, change)) = text.split_once(' ') else { continue };
                        if from == node {
                            continue;
                        }
                        if let Some(change) = Change::decode(change) {
                            handler(Some(change));
                        }
                    }
                    tracing::warn!("Redis subscription lost; subscribing again");
                }
                Err(e) => tracing::warn!(error = %e, "could not subscribe to Redis notices"),
            },
            Err(e) => tracing::warn!(error = %e, "could not connect to Redis for notices"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Against a real Redis (`KILN_TEST_REDIS_URL`, default the local one); skipped with a printed
/// reason when none answers, except under `CI=true`.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn redis_url() -> Option<String> {
        let url = std::env::var("KILN_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
        let reachable = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .is_ok();
        if reachable {
            return Some(url);
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Redis at {url} is required under CI=true");
        }
        eprintln!("SKIP: Redis at {url} is not reachable");
        None
    }

    #[tokio::test]
    async fn counters_count_expire_and_clear() {
        let Some(url) = redis_url() else { return };
        let shared = RedisShared::connect(&url).await.unwrap();
        let key = format!("test:{}", uuid::Uuid::new_v4());
        let minute = Duration::from_secs(60);
        assert_eq!(shared.event_count(&key).await.unwrap(), 0);
        assert_eq!(shared.count_event(&key, minute).await.unwrap(), 1);
        assert_eq!(shared.count_event(&key, minute).await.unwrap(), 2);
        assert_eq!(shared.event_count(&key).await.unwrap(), 2);
        shared.clear_events(&key).await.unwrap();
        assert_eq!(shared.event_count(&key).await.unwrap(), 0);
        let short = Duration::from_millis(200);
        assert_eq!(shared.count_event(&key, short).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(shared.count_event(&key, short).await.unwrap(), 1, "starts again");
        shared.clear_events(&key).await.unwrap();
    }

    #[tokio::test]
    async fn notices_reach_other_nodes_only() {
        let Some(url) = redis_url() else { return };
        let a = RedisShared::connect(&url).await.unwrap();
        let b = RedisShared::connect(&url).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let seen_by = |name: &'static str| -> ChangeHandler {
            let tx = tx.clone();
            Arc::new(move |change| {
                let _ = tx.send((name, change));
            })
        };
        a.subscribe(seen_by("a"));
        b.subscribe(seen_by("b"));
        // Each subscription starts with a "forget everything".
        let mut started = Vec::new();
        while started.len() < 2 {
            let (who, change) = rx.recv().await.unwrap();
            assert_eq!(change, None);
            started.push(who);
        }
        let project = kiln_store::ProjectId::new(format!("p-{}", uuid::Uuid::new_v4()));
        a.announce(&Change::Access(project.clone())).await;
        let (who, change) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!((who, change), ("b", Some(Change::Access(project))));
        // A does not hear its own notice.
        assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err());
    }
}
