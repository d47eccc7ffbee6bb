//! The raw file shape, exactly as YAML gives it. `deny_unknown_fields` everywhere: an
//! unsupported key fails the parse with serde's "unknown field `x`, expected one of …",
//! which names it. `parse` turns these into the typed model.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    /// Obsolete in the Compose spec and ignored by Compose itself; accepted for old files.
    #[serde(default, rename = "version")]
    pub(super) _version: Option<de::IgnoredAny>,
    pub(super) services: BTreeMap<String, RawService>,
    #[serde(default)]
    pub(super) networks: BTreeMap<String, Option<RawNetwork>>,
    #[serde(default)]
    pub(super) volumes: BTreeMap<String, Option<RawVolume>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    pub(super) external: Option<bool>,
    pub(super) name: Option<String>,
    pub(super) internal: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVolume {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) driver_opts: BTreeMap<String, Scalar>,
    pub(super) external: Option<bool>,
    pub(super) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) image: Option<String>,
    pub(super) container_name: Option<String>,
    pub(super) command: Option<StrOrList>,
    pub(super) entrypoint: Option<StrOrList>,
    pub(super) environment: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) env_file: Option<StrOrList>,
    pub(super) ports: Option<Vec<Scalar>>,
    pub(super) volumes: Option<Vec<StrOr<RawLongVolume>>>,
    pub(super) networks: Option<SeqOrMap<Option<RawServiceNetwork>>>,
    pub(super) restart: Option<Scalar>,
    pub(super) healthcheck: Option<RawHealthcheck>,
    pub(super) depends_on: Option<SeqOrMap<Option<RawDependsOn>>>,
    pub(super) labels: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) user: Option<Scalar>,
    pub(super) working_dir: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) devices: Option<Vec<String>>,
    pub(super) deploy: Option<RawDeploy>,
    pub(super) cap_add: Option<Vec<String>>,
    pub(super) ulimits: Option<BTreeMap<String, RawUlimit>>,
    pub(super) extra_hosts: Option<SeqOrMap<Option<Scalar>>>,
    pub(super) logging: Option<RawLogging>,
    pub(super) init: Option<bool>,
    pub(super) dns: Option<StrOrList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLongVolume {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) source: String,
    pub(super) target: String,
    pub(super) read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceNetwork {
    #[serde(default)]
    pub(super) aliases: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependsOn {
    pub(super) condition: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthcheck {
    pub(super) test: Option<StrOrList>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) start_period: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) disable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub(super) resources: Option<RawResources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) reservations: Option<RawReservations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReservations {
    #[serde(default)]
    pub(super) devices: Vec<RawDeviceRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeviceRequest {
    pub(super) driver: Option<String>,
    pub(super) count: Option<Scalar>,
    pub(super) device_ids: Option<Vec<String>>,
    pub(super) capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, Scalar>,
}

/// A YAML scalar where Compose accepts numbers and booleans as well as strings.
#[derive(Debug, Clone)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl StrOrList {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            StrOrList::Str(s) => vec![s],
            StrOrList::List(l) => l,
        }
    }
}

impl<'de> Deserialize<'de> for StrOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrList, E> {
                Ok(StrOrList::Str(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StrOrList, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(StrOrList::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// A short-syntax string or a long-syntax mapping; the mapping keeps its own
/// unknown-key errors (an untagged enum would hide them).
pub(super) enum StrOr<T> {
    Str(String),
    Other(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for StrOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOr<T>, E> {
                Ok(StrOr::Str(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOr<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOr::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Compose's "list or dictionary" fields.
pub(super) enum SeqOrMap<V> {
    Seq(Vec<String>),
    Map(BTreeMap<String, V>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SeqOrMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = SeqOrMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list or a mapping")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SeqOrMap<T>, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(SeqOrMap::Seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SeqOrMap<T>, A::Error> {
                BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(SeqOrMap::Map)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

pub(super) enum RawUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

impl<'de> Deserialize<'de> for RawUlimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pair {
            soft: i64,
            hard: i64,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUlimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or {soft, hard}")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawUlimit, E> {
                Ok(RawUlimit::Single(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawUlimit, E> {
                i64::try_from(v)
                    .map(RawUlimit::Single)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUlimit, A::Error> {
                let p = Pair::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawUlimit::Pair {
                    soft: p.soft,
                    hard: p.hard,
                })
            }
        }
        d.deserialize_any(V)
    }
}
