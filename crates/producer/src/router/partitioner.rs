//! The partition librdkafka's own partitioner gives a key: a key's *home*.

use ksp_core::ConfigError;
use rdkafka::ClientConfig;

/// librdkafka's built-in partitioners (the `partitioner` setting), reproduced so that the
/// router knows, without asking librdkafka, where a key would go by default.
///
/// Messages without a key never have a home: librdkafka spreads them stickily whatever the
/// partitioner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Partitioner {
    /// `random`: every message to a random partition; no key has a home.
    Random,
    /// `consistent`: CRC32 of the key.
    Consistent,
    /// `consistent_random` (librdkafka's default): CRC32 of the key; empty keys spread like
    /// keyless messages.
    #[default]
    ConsistentRandom,
    /// `murmur2`: Java client compatible murmur2 of the key.
    Murmur2,
    /// `murmur2_random` (the Java client's default): murmur2 of the key.
    Murmur2Random,
    /// `fnv1a`: FNV-1a of the key (Sarama compatible).
    Fnv1a,
    /// `fnv1a_random`: FNV-1a of the key.
    Fnv1aRandom,
}

impl Partitioner {
    /// The partitioner configured in `config` (`partitioner`), librdkafka's default if unset.
    pub fn from_config(config: &ClientConfig) -> Result<Self, ConfigError> {
        config
            .get("partitioner")
            .map_or(Ok(Self::default()), Self::from_name)
    }

    /// The partitioner of a `partitioner` setting value.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Ok(match name {
            "random" => Self::Random,
            "consistent" => Self::Consistent,
            "consistent_random" => Self::ConsistentRandom,
            "murmur2" => Self::Murmur2,
            "murmur2_random" => Self::Murmur2Random,
            "fnv1a" => Self::Fnv1a,
            "fnv1a_random" => Self::Fnv1aRandom,
            other => {
                return Err(ConfigError::new(
                    "partitioner",
                    format_args!("{other:?}"),
                    "one of random, consistent, consistent_random, murmur2, murmur2_random, \
                     fnv1a, fnv1a_random",
                ));
            }
        })
    }

    /// The partition librdkafka would pick for `key` among `partition_count` partitions, or
    /// `None` when it would spread the message instead (no key, an empty key under
    /// `consistent_random`, or the `random` partitioner).
    #[inline]
    pub fn home(self, key: Option<&[u8]>, partition_count: i32) -> Option<i32> {
        let key = key?;
        let count = u32::try_from(partition_count).ok().filter(|&n| n > 0)?;
        let hash = match self {
            Self::Random => return None,
            Self::ConsistentRandom if key.is_empty() => return None,
            Self::Consistent | Self::ConsistentRandom => crc32(key),
            Self::Murmur2 | Self::Murmur2Random => {
                murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff
            }
            Self::Fnv1a | Self::Fnv1aRandom => fnv1a(key),
        };
        Some((hash % count) as i32)
    }
}

/// Keys of at most this many bytes are hashed here, four bytes at a time: for such keys,
/// `crc32fast`'s set-up (its CPU feature check and hasher) costs more than the bytes do
/// (measured on the benchmark's 5- to 8-byte keys; 16 is a conservative cut).
const SHORT_KEY: usize = 16;

/// zlib's CRC-32 (librdkafka's `rd_crc32`, the `consistent` partitioners' hash).
#[inline]
fn crc32(key: &[u8]) -> u32 {
    if key.len() > SHORT_KEY {
        return crc32fast::hash(key);
    }
    let [t0, t1, t2, t3] = &CRC32_TABLES;
    let mut words = key.chunks_exact(4);
    let mut crc = !0_u32;
    for word in &mut words {
        crc ^= u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        crc = t3[usize::from(crc as u8)]
            ^ t2[usize::from((crc >> 8) as u8)]
            ^ t1[usize::from((crc >> 16) as u8)]
            ^ t0[usize::from((crc >> 24) as u8)];
    }
    for &b in words.remainder() {
        crc = t0[usize::from(crc as u8 ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// CRC-32's tables for four bytes at a time (reflected polynomial `0xedb88320`): `[0]` the
/// remainder of each byte, `[k]` of each byte followed by `k` zero bytes.
const CRC32_TABLES: [[u32; 256]; 4] = {
    let mut tables = [[0_u32; 256]; 4];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut i = 0;
        while i < 256 {
            let previous = tables[k - 1][i];
            tables[k][i] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};

/// librdkafka's `rd_fnv1a`: 32-bit FNV-1a, then the absolute value of the hash read as a
/// signed integer (to match Sarama). Not a plain FNV crate call because of that last step.
fn fnv1a(key: &[u8]) -> u32 {
    let hash = key.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash as i32).wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of librdkafka's own unit tests (`rdmurmur2.c`, `rdfnv1a.c`).
    const KEYS: [&[u8]; 11] = [
        b"kafka",
        b"giberish123456789",
        b"1234",
        b"234",
        b"34",
        b"4",
        b"PreAmbleWillBeRemoved,ThePrePartThatIs",
        b"reAmbleWillBeRemoved,ThePrePartThatIs",
        b"eAmbleWillBeRemoved,ThePrePartThatIs",
        b"AmbleWillBeRemoved,ThePrePartThatIs",
        b"",
    ];

    #[test]
    fn murmur2_matches_librdkafka_and_the_java_client() {
        let expected: [u32; 11] = [
            0xd067cf64, 0x8f552b0c, 0x9fc97b14, 0xe7c009ca, 0x873930da, 0x5a4b5ca1, 0x78424f1c,
            0x4a62b377, 0xe0e4e09e, 0x62b8b43f, 0x106e08d9,
        ];
        for (key, want) in KEYS.iter().zip(expected) {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED), want, "{key:?}");
        }
    }

    #[test]
    fn fnv1a_matches_librdkafka() {
        let expected: [u32; 11] = [
            0xd33c4e1, 0x77a58295, 0x23bdd03, 0x2dea3cd2, 0x740fa83e, 0x310ca263, 0x65cbd69c,
            0x6e49c79a, 0x69eed356, 0x6abcc023, 0x7ee3623b,
        ];
        for (key, want) in KEYS.iter().zip(expected) {
            assert_eq!(fnv1a(key), want, "{key:?}");
        }
    }

    #[test]
    fn consistent_is_zlib_crc32_modulo_count() {
        // crc32("kafka") = 0x5bbc7517 (zlib, `python3 -c "import zlib; print(hex(zlib.crc32(b'kafka')))"`).
        assert_eq!(crc32fast::hash(b"kafka"), 0x5bbc_7517);
        assert_eq!(
            Partitioner::ConsistentRandom.home(Some(b"kafka"), 7),
            Some((0x5bbc_7517_u32 % 7) as i32)
        );
    }

    /// Short keys, hashed here four bytes at a time, hash as zlib's CRC-32 does: every byte
    /// value at every position of every short length (which reaches every entry of the four
    /// tables), then librdkafka's own test keys. Longer keys go to `crc32fast` itself.
    #[test]
    fn crc32_of_short_and_long_keys_is_zlibs() {
        assert_eq!(crc32(b"kafka"), 0x5bbc_7517);
        assert_eq!(crc32(b""), 0);
        let base: Vec<u8> = (0..SHORT_KEY as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 1..=SHORT_KEY {
            for position in 0..len {
                for byte in 0..=u8::MAX {
                    let mut key = base[..len].to_vec();
                    key[position] = byte;
                    assert_eq!(crc32(&key), crc32fast::hash(&key), "{key:?}");
                }
            }
        }
        for key in KEYS {
            assert_eq!(crc32(key), crc32fast::hash(key), "{key:?}");
        }
        let long = [7_u8; 3 * SHORT_KEY];
        assert_eq!(crc32(&long), crc32fast::hash(&long));
    }

    #[test]
    fn keys_without_a_home() {
        assert_eq!(Partitioner::ConsistentRandom.home(None, 8), None);
        assert_eq!(Partitioner::ConsistentRandom.home(Some(b""), 8), None);
        assert_eq!(Partitioner::Random.home(Some(b"k"), 8), None);
        assert_eq!(Partitioner::Murmur2Random.home(None, 8), None);
        // Under the non-random variants an empty key is still a key.
        assert!(Partitioner::Consistent.home(Some(b""), 8).is_some());
        assert!(Partitioner::Murmur2.home(Some(b""), 8).is_some());
        // No partitions, no home.
        assert_eq!(Partitioner::Murmur2.home(Some(b"k"), 0), None);
        assert_eq!(Partitioner::Murmur2.home(Some(b"k"), -3), None);
    }

    #[test]
    fn home_is_always_in_range() {
        for p in [
            Partitioner::Consistent,
            Partitioner::ConsistentRandom,
            Partitioner::Murmur2,
            Partitioner::Murmur2Random,
            Partitioner::Fnv1a,
            Partitioner::Fnv1aRandom,
        ] {
            for n in [1, 2, 7, 1024] {
                for key in KEYS.iter().filter(|k| !k.is_empty()) {
                    let home = p.home(Some(key), n).unwrap();
                    assert!((0..n).contains(&home), "{p:?} {n} {key:?}");
                }
            }
        }
    }

    #[test]
    fn reads_the_partitioner_setting() {
        let mut config = ClientConfig::new();
        assert_eq!(
            Partitioner::from_config(&config).unwrap(),
            Partitioner::ConsistentRandom
        );
        config.set("partitioner", "murmur2_random");
        assert_eq!(
            Partitioner::from_config(&config).unwrap(),
            Partitioner::Murmur2Random
        );
        config.set("partitioner", "sticky");
        let err = Partitioner::from_config(&config).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `partitioner` = \"sticky\""),
            "{err}"
        );
    }
}
