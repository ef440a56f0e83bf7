//! Shared key moves: every instance sends a moved key to the same partition.

use std::fmt::Write as _;

use fred::prelude::*;

use crate::client::RedisClient;
use crate::error::{L2Error, L2Result};

/// First writer wins, but a detour that is no longer routable for the caller is replaced.
///
/// KEYS[1] = the move; ARGV[1] = the caller's proposal, ARGV[2] = TTL in ms, ARGV[3] = the
/// caller's routable partitions as ",0,3,5,". Returns the partition to use.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.find(ARGV[3], ',' .. current .. ',', 1, true) then
  return tonumber(current)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return tonumber(ARGV[1])
";

/// The key moves a fleet shares in Redis (the L2 behind each producer's moka L1).
///
/// Key: `{prefix}:v1:move:{topic}:{xxh3_64(key) as 16 hex digits}`, value: the partition as
/// decimal text, expiring after `key_move_ttl`.
#[derive(Debug, Clone)]
pub struct SharedMoves {
    client: RedisClient,
    ttl_ms: u64,
}

impl SharedMoves {
    /// Moves stored through `client`.
    pub fn new(client: RedisClient) -> Self {
        let ttl_ms = u64::try_from(client.config().key_move_ttl.as_millis()).unwrap_or(u64::MAX);
        Self { client, ttl_ms }
    }

    /// The partition a moved key goes to: the detour already shared by another instance when
    /// it is routable (`routable` lists the caller's routable partitions), otherwise
    /// `proposal`, which is then shared. One round trip.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the proposal written; either outcome is a
    /// valid state.
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
        let ttl = self.ttl_ms;
        let partition: i64 = self
            .client
            .call(|c| async move {
                c.eval(CLAIM, key, vec![proposal.to_string(), ttl.to_string(), set])
                    .await
            })
            .await?;
        i32::try_from(partition)
            .ok()
            .filter(|p| *p == proposal || routable.contains(p))
            .ok_or_else(|| L2Error::Unexpected(format!("partition {partition}")))
    }

    /// The shared detour of a key, if any (for tools and tests).
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
        self.client
            .key(&["v1", "move", topic, &format!("{key_hash:016x}")])
    }

    /// The client.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }
}
