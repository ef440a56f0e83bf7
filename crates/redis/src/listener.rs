//! A pub/sub listener: one subscriber connection, one channel, a handler per message.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::client::RedisClient;
use crate::error::L2Result;

/// Subscribes to `channel` on a connection of its own and calls `on_message` with each
/// message's text until `cancel` fires. The subscription is retried (with backoff) until it
/// takes, then kept across reconnections by fred.
pub(crate) fn listen(
    client: &RedisClient,
    channel: String,
    cancel: CancellationToken,
    on_message: impl Fn(&str) + Send + 'static,
) -> L2Result<AbortOnDropHandle<()>> {
    crate::client::in_runtime()?;
    let subscriber = client.subscriber()?;
    let quit_within = client.config().command_timeout;
    let reconnect_max_delay = client.config().reconnect_max_delay;
    let task = async move {
        // fred's tasks (the connection, which reconnects forever, and the resubscriber) end
        // with this one, even when `quit` below times out or never runs (aborted).
        let _connection = AbortOnDropHandle::new(crate::client::keep_connecting(
            subscriber.clone(),
            reconnect_max_delay,
        ));
        let _resubscribe = AbortOnDropHandle::new(subscriber.manage_subscriptions());
        let mut messages = subscriber.message_rx();
        let subscribe = {
            let subscriber = subscriber.clone();
            let channel = channel.clone();
            // The first subscription may come before the server is reachable.
            let attempt = move || {
                let subscriber = subscriber.clone();
                let channel = channel.clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(2), subscriber.subscribe(channel))
                        .await
                        .map_err(|_| "subscribe timed out".to_owned())?
                        .map_err(|e| e.to_string())
                }
            };
            attempt
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(3))
                        .without_max_times(),
                )
                .notify(
                    |e: &String, after: Duration| debug!(error = %e, ?after, "subscribing again"),
                )
        };
        let _subscribing = AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = subscribe.await;
        }));
        loop {
            let message = tokio::select! {
                () = cancel.cancelled() => break,
                m = messages.recv() => m,
            };
            let message = match message {
                Ok(message) => message,
                // Lagged behind the broadcast channel: polling still covers us.
                Err(RecvError::Lagged(_)) => continue,
                // Closed: no message will come (polling still covers us).
                Err(RecvError::Closed) => break,
            };
            if let Some(text) = message.value.as_str() {
                on_message(&text);
            }
        }
        // Bounded like every other command: the server may be gone.
        let _ = tokio::time::timeout(quit_within, subscriber.quit()).await;
    };
    Ok(AbortOnDropHandle::new(tokio::spawn(task)))
}
