//! Shared key moves: every instance sends a moved key to the same partition.

use std::fmt::Write as _;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::client::RedisClient;
use crate::error::{L2Error, L2Result};

/// First writer wins, but a detour that is no longer routable for the caller is replaced, and
/// a replacement is announced so that the instances still holding the old detour forget it.
///
/// KEYS[1] = the move; ARGV[1] = the caller's proposal, ARGV[2] = TTL in ms, ARGV[3] = the
/// caller's routable partitions as ",0,3,5,", ARGV[4] = the channel, ARGV[5] = the announcement
/// (without the partition). Returns the partition to use.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.find(ARGV[3], ',' .. current .. ',', 1, true) then
  return tonumber(current)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if current and current ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. ARGV[1])
end
return tonumber(ARGV[1])
";

/// The key moves a fleet shares in Redis (the L2 behind each producer's moka L1).
///
/// Key: `{prefix}:v2:move:{cluster}:{group}:{topic}:{xxh3_64(key) as 16 hex digits}`, value:
/// the partition as decimal text, expiring after `key_move_ttl`. Moves are scoped by Kafka
/// cluster and consumer group: fleets routing by different groups, or for different clusters,
/// sharing one Redis never see each other's detours. When a claim replaces a detour that is no
/// longer routable, it announces `{instance} {topic} {hash} {partition}` on
/// `{prefix}:v2:moves:{cluster}:{group}`; see [`SharedMoves::listen`].
#[derive(Debug, Clone)]
pub struct SharedMoves {
    client: RedisClient,
    scope: String,
    channel: String,
    instance: String,
    ttl_ms: u64,
}

/// A detour another instance replaced: forget the one remembered locally.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replaced {
    /// The topic.
    pub topic: String,
    /// `xxh3_64` of the key.
    pub key_hash: u64,
    /// The new detour.
    pub partition: i32,
}

impl SharedMoves {
    /// Moves of `group` on Kafka cluster `cluster`, stored through `client`; `instance` names
    /// this producer in announcements.
    pub fn new(
        client: RedisClient,
        cluster: &str,
        group: &str,
        instance: impl Into<String>,
    ) -> Self {
        let ttl_ms = u64::try_from(client.config().key_move_ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            scope: format!("{cluster}:{group}"),
            channel: client.key(&["v2", "moves", cluster, group]),
            instance: instance.into(),
            client,
            ttl_ms,
        }
    }

    /// The partition a moved key goes to: the detour already shared by another instance when
    /// it is routable (`routable` lists the caller's routable partitions), otherwise
    /// `proposal`, which is then shared. One round trip.
    ///
    /// # Errors
    ///
    /// An [`L2Error`] when Redis failed, timed out, or the breaker is open.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the proposal written; either outcome is a
    /// valid state, and the breaker does not count it.
    pub async fn claim(
        &self,
        topic: &str,
        key_hash: u64,
        proposal: i32,
        routable: &[i32],
    ) -> L2Result<i32> {
        let key = self.key(topic, key_hash);
        let mut set = String::with_capacity(routable.len() * 4 + 1);
        set.push(',');
        for p in routable {
            let _ = write!(set, "{p},");
        }
        let announcement = format!("{} {topic} {key_hash:016x}", self.instance);
        let args = vec![
            proposal.to_string(),
            self.ttl_ms.to_string(),
            set,
            self.channel.clone(),
            announcement,
        ];
        let partition: i64 = self
            .client
            .call(|c| async move { c.eval(CLAIM, key, args).await })
            .await?;
        i32::try_from(partition)
            .ok()
            .filter(|p| *p == proposal || routable.contains(p))
            .ok_or_else(|| L2Error::Unexpected(format!("partition {partition}")))
    }

    /// Calls `on_replaced` whenever another instance replaces a shared detour, until
    /// `cancel` fires: the caller forgets its own copy, so the instances converge on the new
    /// detour instead of each keeping the one it first saw.
    ///
    /// # Errors
    ///
    /// An [`L2Error`] when the subscriber connection cannot be set up.
    pub fn listen(
        &self,
        cancel: CancellationToken,
        on_replaced: impl Fn(Replaced) + Send + 'static,
    ) -> L2Result<AbortOnDropHandle<()>> {
        let me = self.instance.clone();
        crate::listener::listen(&self.client, self.channel.clone(), cancel, move |text| {
            let mut parts = text.split(' ');
            let (Some(instance), Some(topic), Some(hash), Some(partition)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            if instance == me {
                return;
            }
            let (Ok(key_hash), Ok(partition)) = (u64::from_str_radix(hash, 16), partition.parse())
            else {
                return;
            };
            on_replaced(Replaced {
                topic: topic.to_owned(),
                key_hash,
                partition,
            });
        })
    }

    /// The shared detour of a key, if any (for tools and tests).
    ///
    /// # Errors
    ///
    /// An [`L2Error`] when Redis failed or the stored value is not a partition.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a read changes nothing.
    pub async fn get(&self, topic: &str, key_hash: u64) -> L2Result<Option<i32>> {
        let key = self.key(topic, key_hash);
        let value: Option<String> = self
            .client
            .call(|c| async move { c.get(key).await })
            .await?;
        value
            .map(|v| v.parse().map_err(|_| L2Error::Unexpected(v)))
            .transpose()
    }

    /// Writes a detour unconditionally (for tools and tests).
    ///
    /// # Errors
    ///
    /// An [`L2Error`] when Redis failed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the detour written.
    pub async fn put(&self, topic: &str, key_hash: u64, partition: i32) -> L2Result<()> {
        let key = self.key(topic, key_hash);
        let ttl = i64::try_from(self.ttl_ms).unwrap_or(i64::MAX);
        self.client
            .call(|c| async move {
                c.set::<(), _, _>(
                    key,
                    partition.to_string(),
                    Some(fred::types::Expiration::PX(ttl)),
                    None,
                    false,
                )
                .await
            })
            .await
    }

    fn key(&self, topic: &str, key_hash: u64) -> String {
        self.client.key(&[
            "v2",
            "move",
            &self.scope,
            topic,
            &format!("{key_hash:016x}"),
        ])
    }

    /// The client.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }
}
