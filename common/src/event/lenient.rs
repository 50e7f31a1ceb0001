//! The lenient first pass of parsing: serde types that accept any JSON type for every field,
//! so that a wrong type is reported by field name and expected type (in `validate.rs`), not
//! as a serde message. Strings are borrowed from the body when they need no unescaping.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::MAX_MENTIONS;

/// A JSON value of any type, kept cheaply (strings borrowed when unescaped).
#[derive(Debug)]
pub(super) enum LooseValue<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Negative,
    F64(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl LooseValue<'_> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            LooseValue::Str(_) => "a string",
            LooseValue::U64(_) | LooseValue::Negative | LooseValue::F64(_) => "a number",
            LooseValue::Bool => "a boolean",
            LooseValue::Null => "null",
            LooseValue::Array => "an array",
            LooseValue::Object => "an object",
        }
    }
}

pub(super) struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = LooseValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(LooseValue::Bool)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(LooseValue::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 { LooseValue::U64(v as u64) } else { LooseValue::Negative })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(LooseValue::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(LooseValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(LooseValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(LooseValue::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(LooseValue::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(LooseValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LooseValue::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(LooseValue::Object)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LooseValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// Visitor methods that record a scalar (or null) as `$wrap(LooseValue::…)`: the shared part of
/// the "expected X, got Y" wrappers below.
macro_rules! other_scalars {
    ($wrap:path) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::Bool))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::U64(v)))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::Negative))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::F64(v)))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::Str(Cow::Borrowed(""))))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::Null))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(LooseValue::Null))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

/// A value that must be an object, or the type it was instead.
#[derive(Debug)]
pub(super) enum ObjectOr<'a, T> {
    Object(T),
    Other(LooseValue<'a>),
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOr<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            other_scalars!(ObjectOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::Other(LooseValue::Array))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData)).map(|v| match v {
            ObjectOr::Object(t) => ObjectOr::Object(t),
            ObjectOr::Other(l) => ObjectOr::Other(l),
        })
    }
}

/// A value that must be an array of scalars, or the type it was instead.
#[derive(Debug)]
pub(super) enum ArrayOr<'a> {
    Array(Vec<LooseValue<'a>>),
    Other(LooseValue<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ArrayOr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArrayOr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<LooseValue<'de>>()? {
                    // Keep a bounded amount; the count is still checked below.
                    if out.len() <= MAX_MENTIONS {
                        out.push(v);
                    }
                }
                Ok(ArrayOr::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                LooseVisitor.visit_map(map).map(ArrayOr::Other)
            }
            other_scalars!(ArrayOr::Other);
        }
        d.deserialize_any(V).map(|v| match v {
            ArrayOr::Array(a) => ArrayOr::Array(a),
            ArrayOr::Other(l) => ArrayOr::Other(l),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawMessage<'a> {
    #[serde(borrow)]
    pub(super) kind: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) body: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) mentions: Option<ArrayOr<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawEvent<'a> {
    #[serde(borrow, rename = "type")]
    pub(super) event_type: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) session_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) session_kind: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) sender_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) recipient_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) client_msg_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) sent_at: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) message: Option<ObjectOr<'a, RawMessage<'a>>>,
    #[serde(borrow)]
    pub(super) target_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) user_id: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) read_seq: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) name: Option<LooseValue<'a>>,
    #[serde(borrow)]
    pub(super) avatar_url: Option<LooseValue<'a>>,
}

pub(super) type RawItem<'a> = ObjectOr<'a, RawEvent<'a>>;
