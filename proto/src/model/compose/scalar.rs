//! Deserializers for Compose's alternative value forms: a scalar that may be a string,
//! number or boolean; a string or a list; a short-syntax string or a long-syntax mapping;
//! a list or a mapping; a ulimit as a number or `{soft, hard}`.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

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
            // A short-syntax port may be written as a bare number.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOr<T>, E> {
                Ok(StrOr::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOr<T>, E> {
                Ok(StrOr::Str(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOr<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOr::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A single string or a list of `T` (`env_file: a.env` or `env_file: [{path: a.env}]`).
pub(super) enum OneOrList<T> {
    One(String),
    List(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrList<T>, E> {
                Ok(OneOrList::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OneOrList<T>, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrList::List)
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
