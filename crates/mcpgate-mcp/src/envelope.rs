//! The envelope of one JSON-RPC message, borrowed from its bytes.
//!
//! The whole message is checked (valid JSON and UTF-8, depth, no duplicate keys at any
//! level), but only the envelope is kept: the rest stays in the original bytes, which are
//! what gets forwarded.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

use crate::code;

/// Limits on untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message in bytes (default 4 MiB).
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays (default 64).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 20,
            max_depth: 64,
        }
    }
}

/// What kind of message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`.
    Response,
}

/// A parsed envelope. Slices borrow from the message.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub kind: Kind,
    /// The id as written (a JSON string or integer), to echo back verbatim.
    pub id: Option<&'a RawValue>,
    pub method: Option<&'a str>,
    pub params: Option<&'a RawValue>,
    /// `params.name`, for `tools/call` and `prompts/get`.
    pub name: Option<&'a str>,
    pub arguments: Option<&'a RawValue>,
    /// `params.uri` (resources), raw: [`string`] reads it.
    pub uri: Option<&'a RawValue>,
    /// `params.ref` (`completion/complete`), raw: [`reference`] reads it.
    pub reference: Option<&'a RawValue>,
    /// `params.requestId` (`notifications/cancelled`), raw.
    pub request_id: Option<&'a RawValue>,
    /// `params.notifications` (`subscriptions/listen`), raw: [`subscriptions`] reads it.
    pub notifications: Option<&'a RawValue>,
    pub result: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
}

/// Why a message was refused: a JSON-RPC error to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EnvelopeError {
    pub code: i64,
    pub message: String,
    /// The message's id, when it could be read, to answer to.
    pub id: Option<String>,
}

impl EnvelopeError {
    fn invalid(message: impl Into<String>) -> Self {
        EnvelopeError {
            code: code::INVALID_REQUEST,
            message: message.into(),
            id: None,
        }
    }
}

const TOP_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
const PARAM_KEYS: [&str; 7] = [
    "name",
    "arguments",
    "_meta",
    "uri",
    "ref",
    "requestId",
    "notifications",
];
const REF_KEYS: [&str; 3] = ["type", "name", "uri"];

/// Parses and checks one message (one line of the stdio transport, without its newline).
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, EnvelopeError> {
    if bytes.len() > limits.max_bytes {
        return Err(EnvelopeError::invalid(format!(
            "message larger than {} bytes",
            limits.max_bytes
        )));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {}
        Some(b'[') => return Err(EnvelopeError::invalid("JSON-RPC batches are not accepted")),
        _ => {
            // Tell invalid JSON from a valid non-object.
            return Err(match serde_json::from_slice::<de::IgnoredAny>(bytes) {
                Ok(_) => EnvelopeError::invalid("a JSON-RPC message must be an object"),
                Err(_) => EnvelopeError {
                    code: code::PARSE_ERROR,
                    message: "parse error: invalid JSON".into(),
                    id: None,
                },
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = match de.deserialize_map(TopVisitor {
        depth: limits.max_depth,
    }) {
        Ok(raw) => raw,
        Err(e) => return Err(json_error(e)),
    };
    if let Err(e) = de.end() {
        return Err(json_error(e));
    }
    finish(raw, limits)
}

fn json_error(e: serde_json::Error) -> EnvelopeError {
    match e.classify() {
        serde_json::error::Category::Data => {
            let msg = e.to_string();
            // Drop serde_json's " at line 1 column N" suffix: positions are noise here.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            EnvelopeError::invalid(msg)
        }
        _ => EnvelopeError {
            code: code::PARSE_ERROR,
            message: "parse error: invalid JSON".into(),
            id: None,
        },
    }
}

#[derive(Default)]
struct Raw<'a> {
    jsonrpc: Option<Cow<'a, str>>,
    id: Option<&'a RawValue>,
    method: Option<Text<'a>>,
    params: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
}

fn finish<'a>(raw: Raw<'a>, limits: &Limits) -> Result<Envelope<'a>, EnvelopeError> {
    let id_text = raw.id.map(|r| r.get().to_string());
    let fail = |message: String| EnvelopeError {
        code: code::INVALID_REQUEST,
        message,
        id: id_text.clone(),
    };
    if raw.jsonrpc.as_deref() != Some("2.0") {
        return Err(fail("\"jsonrpc\" must be \"2.0\"".into()));
    }
    if let Some(id) = raw.id {
        let t = id.get();
        let ok = t.starts_with('"')
            || (t != "null" && t.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
        if !ok {
            return Err(EnvelopeError {
                id: None,
                ..fail("\"id\" must be a string or an integer".into())
            });
        }
    }
    let method = match raw.method {
        None => None,
        Some(Text::Plain(m)) => Some(m),
        Some(Text::Escaped) => {
            return Err(fail(
                "escaped characters in \"method\" are not accepted".into(),
            ));
        }
        Some(Text::Other) => return Err(fail("\"method\" must be a string".into())),
    };
    let kind = match (method, raw.id, raw.result.is_some() || raw.error.is_some()) {
        (Some(_), _, true) => {
            return Err(fail(
                "a message cannot have both \"method\" and \"result\" or \"error\"".into(),
            ));
        }
        (Some(_), Some(_), false) => Kind::Request,
        (Some(_), None, false) => Kind::Notification,
        (None, Some(_), true) => {
            if raw.result.is_some() && raw.error.is_some() {
                return Err(fail(
                    "a response cannot have both \"result\" and \"error\"".into(),
                ));
            }
            Kind::Response
        }
        _ => {
            return Err(fail(
                "neither a request, a notification nor a response".into(),
            ));
        }
    };
    let mut env = Envelope {
        kind,
        id: raw.id,
        method,
        params: raw.params,
        name: None,
        arguments: None,
        uri: None,
        reference: None,
        request_id: None,
        notifications: None,
        result: raw.result,
        error: raw.error,
    };
    if let Some(params) = raw.params {
        let t = params.get();
        if !(t.starts_with('{') || t.starts_with('[')) {
            return Err(fail("\"params\" must be an object or an array".into()));
        }
        if t.starts_with('[') {
            let mut de = serde_json::Deserializer::from_str(t);
            Check {
                depth: limits.max_depth.saturating_sub(1),
            }
            .deserialize(&mut de)
            .map_err(|e| EnvelopeError {
                id: id_text.clone(),
                ..json_error(e)
            })?;
        }
        if t.starts_with('{') {
            let [
                name,
                arguments,
                _,
                uri,
                reference,
                request_id,
                notifications,
            ] = pick(params, PARAM_KEYS, limits.max_depth.saturating_sub(1)).map_err(|e| {
                EnvelopeError {
                    id: id_text.clone(),
                    ..e
                }
            })?;
            env.arguments = arguments;
            env.uri = uri;
            env.reference = reference;
            env.request_id = request_id;
            env.notifications = notifications;
            let name = match name {
                None => None,
                Some(raw) => {
                    let mut de = serde_json::Deserializer::from_str(raw.get());
                    Some(TextSeed.deserialize(&mut de).map_err(|e| EnvelopeError {
                        id: id_text.clone(),
                        ..json_error(e)
                    })?)
                }
            };
            env.name = match name {
                None => None,
                Some(Text::Plain(n)) => Some(n),
                Some(Text::Escaped) => {
                    return Err(fail(
                        "escaped characters in \"params.name\" are not accepted".into(),
                    ));
                }
                Some(Text::Other) => {
                    return Err(EnvelopeError {
                        code: code::INVALID_PARAMS,
                        message: "\"params.name\" must be a string".into(),
                        id: id_text,
                    });
                }
            };
        }
    }
    if method == Some("tools/call") && env.name.is_none() {
        return Err(EnvelopeError {
            code: code::INVALID_PARAMS,
            message: "tools/call needs \"params.name\"".into(),
            id: id_text,
        });
    }
    Ok(env)
}

/// A string value: plain (borrowed), written with escapes, or not a string at all.
#[derive(Debug, Clone, Copy)]
enum Text<'a> {
    Plain(&'a str),
    Escaped,
    Other,
}

/// A key: plain, or written with escapes (decoded).
enum Key<'a> {
    Plain(&'a str),
    Escaped(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Plain(s) => s,
            Key::Escaped(s) => s,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Plain(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Escaped(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Text<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Plain(v))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Text<'de>, E> {
                Ok(Text::Escaped)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
                Ok(Text::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                Check { depth: 8 }.visit_map(map).map(|_| Text::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                Check { depth: 8 }.visit_seq(seq).map(|_| Text::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `key` names the ASCII key `known` for a parser that matches keys without regard
/// to case — as Go's `encoding/json` does, with Unicode simple folding: `ſ` (U+017F) is `s`
/// and the Kelvin sign `K` (U+212A) is `k` there.
pub(crate) fn folds_to(key: &str, known: &str) -> bool {
    let mut k = key.chars().map(|c| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    let mut n = known.chars().map(|c| c.to_ascii_lowercase());
    loop {
        match (k.next(), n.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Refuses a key that differs from a known envelope key only in case, folding or spelling.
fn check_key<E: de::Error>(key: &Key<'_>, known: &[&str]) -> Result<Option<usize>, E> {
    let k = key.as_str();
    if let Key::Escaped(_) = key
        && known.iter().any(|n| folds_to(k, n))
    {
        return Err(E::custom(format!("escaped key {k:?} is not accepted")));
    }
    if let Some(i) = known.iter().position(|n| *n == k) {
        return Ok(Some(i));
    }
    if let Some(n) = known.iter().find(|n| folds_to(k, n)) {
        return Err(E::custom(format!(
            "key {k:?} is not accepted (the key is {n:?})"
        )));
    }
    Ok(None)
}

/// Keys seen in one object, to refuse duplicates: a short list for the usual few keys, a
/// hash set beyond (linear time for objects with thousands of keys).
#[derive(Default)]
struct Seen<'a> {
    few: Vec<Key<'a>>,
    many: Option<std::collections::HashSet<String>>,
}

/// Keys compared by scanning; more go into a hash set.
const FEW_KEYS: usize = 16;

impl<'a> Seen<'a> {
    fn insert<E: de::Error>(&mut self, key: Key<'a>) -> Result<(), E> {
        let duplicate = || E::custom(format!("duplicate key {:?}", key.as_str()));
        if let Some(many) = &mut self.many {
            if many.len() >= 4096 {
                return Err(E::custom("an object has more than 4096 keys"));
            }
            if !many.insert(key.as_str().to_string()) {
                return Err(duplicate());
            }
            return Ok(());
        }
        if self.few.iter().any(|k| k.as_str() == key.as_str()) {
            return Err(duplicate());
        }
        self.few.push(key);
        if self.few.len() > FEW_KEYS {
            self.many = Some(self.few.drain(..).map(|k| k.as_str().to_string()).collect());
        }
        Ok(())
    }
}

struct TopVisitor {
    depth: usize,
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        let mut raw = Raw::default();
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let known = check_key::<A::Error>(&key, &TOP_KEYS)?;
            seen.insert::<A::Error>(key)?;
            match known {
                Some(0) => raw.jsonrpc = Some(map.next_value::<Cow<'de, str>>()?),
                Some(1) => raw.id = Some(map.next_value::<&'de RawValue>()?),
                Some(2) => raw.method = Some(map.next_value_seed(TextSeed)?),
                // Checked once, as it is picked apart (`finish`).
                Some(3) => raw.params = Some(map.next_value::<&'de RawValue>()?),
                Some(4) => raw.result = Some(checked_raw(&mut map, self.depth)?),
                Some(5) => raw.error = Some(checked_raw(&mut map, self.depth)?),
                _ => map.next_value_seed(Check {
                    depth: self.depth.saturating_sub(1),
                })?,
            }
        }
        Ok(raw)
    }
}

/// Takes a value as raw JSON, then checks its depth and keys in a second pass.
fn checked_raw<'de, A: MapAccess<'de>>(
    map: &mut A,
    depth: usize,
) -> Result<&'de RawValue, A::Error> {
    let raw = map.next_value::<&'de RawValue>()?;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Check {
        depth: depth.saturating_sub(1),
    }
    .deserialize(&mut de)
    .map_err(|e| de::Error::custom(json_error(e).message))?;
    Ok(raw)
}

/// Picks the values of `keys` from a JSON object, raw and borrowed, refusing what could be
/// read differently by a server: keys that differ from a known one only in case or by
/// escapes, duplicate keys, nesting deeper than `depth`. A value that is not an object
/// yields no keys.
pub(crate) fn pick<'a, const N: usize>(
    object: &'a RawValue,
    keys: [&'static str; N],
    depth: usize,
) -> Result<[Option<&'a RawValue>; N], EnvelopeError> {
    if !object.get().starts_with('{') {
        return Ok([None; N]);
    }
    let mut de = serde_json::Deserializer::from_str(object.get());
    de.deserialize_map(PickVisitor { keys, depth })
        .map_err(json_error)
}

struct PickVisitor<const N: usize> {
    keys: [&'static str; N],
    depth: usize,
}

impl<'de, const N: usize> Visitor<'de> for PickVisitor<N> {
    type Value = [Option<&'de RawValue>; N];
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = [None; N];
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let known = check_key::<A::Error>(&key, &self.keys)?;
            seen.insert::<A::Error>(key)?;
            match known {
                Some(i) => out[i] = Some(checked_raw(&mut map, self.depth)?),
                None => map.next_value_seed(Check {
                    depth: self.depth.saturating_sub(1),
                })?,
            }
        }
        Ok(out)
    }
}

/// A JSON string value, decoded (escapes resolved); `None` if `raw` is not a string.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(t).ok().map(Cow::Owned)
}

/// The resource URIs a `subscriptions/listen` request's `params.notifications` subscribes to
/// (`resourceSubscriptions`, none if absent), read strictly; `None` if that is not a list
/// of strings.
pub fn subscriptions(raw: &RawValue) -> Option<Vec<Cow<'_, str>>> {
    let [list] = pick(raw, ["resourceSubscriptions"], 4).ok()?;
    let Some(list) = list else {
        return Some(Vec::new());
    };
    let items: Vec<&RawValue> = serde_json::from_str(list.get()).ok()?;
    items.into_iter().map(string).collect()
}

/// What a `completion/complete` request refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    /// `{"type": "ref/prompt", "name": ...}`
    Prompt(Cow<'a, str>),
    /// `{"type": "ref/resource", "uri": ...}`
    Resource(Cow<'a, str>),
}

/// Reads `params.ref` strictly (the same key rules as the envelope); `None` if it is not a
/// prompt or resource reference with a string name or URI.
pub fn reference(raw: &RawValue) -> Option<Reference<'_>> {
    let [kind, name, uri] = pick(raw, REF_KEYS, 4).ok()?;
    match string(kind?)?.as_ref() {
        "ref/prompt" if uri.is_none() => string(name?).map(Reference::Prompt),
        "ref/resource" if name.is_none() => string(uri?).map(Reference::Resource),
        _ => None,
    }
}

/// Checks any value: depth and duplicate keys, keeping nothing.
#[derive(Clone, Copy)]
struct Check {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == 0 {
            return Err(de::Error::custom("JSON nested too deep"));
        }
        while seq
            .next_element_seed(Check {
                depth: self.depth - 1,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth == 0 {
            return Err(de::Error::custom("JSON nested too deep"));
        }
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            seen.insert::<A::Error>(key)?;
            map.next_value_seed(Check {
                depth: self.depth - 1,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Envelope<'_> {
        parse(s.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> EnvelopeError {
        parse(s.as_bytes(), &Limits::default()).expect_err(s)
    }

    #[test]
    fn reads_the_envelope() {
        let e = ok(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"progressToken":1}},"x-extra":[1,2]}"#,
        );
        assert_eq!(e.kind, Kind::Request);
        assert_eq!(e.id.unwrap().get(), "7");
        assert_eq!(e.method, Some("tools/call"));
        assert_eq!(e.name, Some("echo"));
        assert_eq!(e.arguments.unwrap().get(), r#"{"message":"hi"}"#);
        let n = ok(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(n.kind, Kind::Notification);
        let r = ok(r#"{"jsonrpc":"2.0","id":"a-1","result":{"tools":[]}}"#);
        assert_eq!(r.kind, Kind::Response);
        assert_eq!(r.id.unwrap().get(), "\"a-1\"");
        assert_eq!(
            ok(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#).kind,
            Kind::Response
        );
        // Key order does not matter; unknown methods pass.
        assert_eq!(
            ok(r#"{"params":{"name":"x"},"method":"future/thing","id":1,"jsonrpc":"2.0"}"#).name,
            Some("x")
        );
    }

    #[test]
    fn refuses_case_variants_and_escaped_keys() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","ID":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"x","name":"echo"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"m\u0065thod":"tools/call","params":{"name":"x"}}"#,
        ] {
            let e = err(s);
            assert_eq!(e.code, code::INVALID_REQUEST, "{s}: {e:?}");
        }
    }

    #[test]
    fn refuses_keys_that_fold_to_envelope_keys() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"param\u017f":{"name":"x"}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"},\"param\u{17f}\":{\"name\":\"x\"}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"argument\u{17f}\":{}}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"},\"re\u{17f}ult\":{}}",
        ] {
            assert_eq!(err(s).code, code::INVALID_REQUEST, "{s}");
        }
        // Keys that merely contain such letters are fine.
        ok(
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":{\"\u{17f}\":1,\"\u{212a}elvin\":2}}",
        );
        assert!(folds_to("\u{212a}ind", "kind") && !folds_to("kinds", "kind"));
    }

    #[test]
    fn many_keys_are_checked_in_linear_time() {
        let keys: Vec<String> = (0..4000).map(|i| format!("\"k{i}\":{i}")).collect();
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":{{{}}}}}}}"#,
            keys.join(",")
        );
        let start = std::time::Instant::now();
        for _ in 0..10 {
            assert!(parse(line.as_bytes(), &Limits::default()).is_ok());
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let dup = line.replace("\"k3999\"", "\"k0\"");
        assert!(err(&dup).message.contains("duplicate key"));
    }

    #[test]
    fn refuses_duplicates_anywhere() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"deep":[{"k":1,"k":2}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1},"extra":{"k":1,"\u006b":2}}"#,
        ] {
            let e = err(s);
            assert_eq!(e.code, code::INVALID_REQUEST, "{s}: {e:?}");
            assert!(e.message.contains("duplicate key"), "{s}: {e:?}");
        }
    }

    #[test]
    fn refuses_escaped_and_non_string_names() {
        let e =
            err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\u006f"}}"#);
        assert!(e.message.contains("escaped"), "{e:?}");
        assert_eq!(e.id.as_deref(), Some("1"));
        let e =
            err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/c\u0061ll","params":{"name":"echo"}}"#);
        assert!(e.message.contains("escaped"), "{e:?}");
        for name in ["1", "true", "null", "[\"echo\"]", "{\"a\":1}"] {
            let s = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":{name}}}}}"#
            );
            let e = err(&s);
            assert_eq!(e.code, code::INVALID_PARAMS, "{s}");
        }
        let e = err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        assert_eq!(e.code, code::INVALID_PARAMS);
    }

    #[test]
    fn refuses_batches_odd_shapes_and_bad_json() {
        assert_eq!(
            err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).code,
            code::INVALID_REQUEST
        );
        for s in [
            r#""just a string""#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"str"}"#,
        ] {
            assert_eq!(err(s).code, code::INVALID_REQUEST, "{s}");
        }
        for s in [
            &b"{\"jsonrpc\":"[..],
            b"not json",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}",
            b"",
            b"{} trailing",
        ] {
            assert_eq!(
                parse(s, &Limits::default()).unwrap_err().code,
                code::PARSE_ERROR,
                "{s:?}"
            );
        }
    }

    #[test]
    fn reads_uri_ref_and_request_id_strictly() {
        let e = ok(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:\/\/\/a\u0062"}}"#,
        );
        assert_eq!(string(e.uri.unwrap()).unwrap(), "file:///ab");
        let e = ok(
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"a","value":"b"}}}"#,
        );
        assert_eq!(
            reference(e.reference.unwrap()),
            Some(Reference::Prompt("greet".into()))
        );
        for bad in [
            r#"{"type":"ref/prompt","name":"a","Name":"b"}"#,
            r#"{"type":"ref/prompt"}"#,
            r#"{"type":"ref/prompt","name":1}"#,
            r#"{"type":"ref/other","name":"a"}"#,
            r#"{"type":"ref/prompt","name":"a","uri":"x"}"#,
            r#""ref/prompt""#,
        ] {
            let raw: Box<RawValue> = serde_json::from_str(bad).unwrap();
            assert_eq!(reference(&raw), None, "{bad}");
        }
        let e = ok(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a","reason":"x"}}"#,
        );
        assert_eq!(e.request_id.unwrap().get(), "\"a\"");
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","URI":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","uri":"b"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestID":1}}"#,
        ] {
            assert_eq!(err(s).code, code::INVALID_REQUEST, "{s}");
        }
    }

    #[test]
    fn limits_size_and_depth() {
        let limits = Limits {
            max_bytes: 100,
            max_depth: 10,
        };
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "a".repeat(200)
        );
        assert_eq!(
            parse(big.as_bytes(), &limits).unwrap_err().code,
            code::INVALID_REQUEST
        );
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":{}1{}}}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        let e = parse(
            deep.as_bytes(),
            &Limits {
                max_bytes: 1000,
                max_depth: 10,
            },
        )
        .unwrap_err();
        assert!(e.message.contains("too deep"), "{e:?}");
        let fine = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":{}1{}}}}}"#,
            "[".repeat(5),
            "]".repeat(5)
        );
        assert!(
            parse(
                fine.as_bytes(),
                &Limits {
                    max_bytes: 1000,
                    max_depth: 10
                }
            )
            .is_ok()
        );
        // Far deeper than serde_json's own limit: still an answer, not a crash.
        let abyss = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(
            parse(
                abyss.as_bytes(),
                &Limits {
                    max_bytes: 1 << 20,
                    max_depth: 64
                }
            )
            .is_err()
        );
    }
}
