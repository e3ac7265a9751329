//! Audit events (DESIGN.md §7) and the query that searches them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::SystemTime;

use crate::identity::{Claims, IdentityKind};

/// Event types and their stable codes. A code never changes meaning once released.
pub mod codes {
    pub const USER_LOGIN: (&str, &str) = ("user.login", "MG1000I");
    pub const USER_LOGIN_FAILURE: (&str, &str) = ("user.login", "MG1000W");
    pub const USER_SIGNUP: (&str, &str) = ("user.create", "MG1001I");
    pub const CERT_CREATE: (&str, &str) = ("cert.create", "MG2000I");
    pub const RESOURCE_CREATE: (&str, &str) = ("resource.create", "MG3000I");
    pub const RESOURCE_UPDATE: (&str, &str) = ("resource.update", "MG3001I");
    pub const RESOURCE_DELETE: (&str, &str) = ("resource.delete", "MG3002I");
    pub const BOT_JOIN: (&str, &str) = ("bot.join", "MG2001I");
    pub const BOT_RENEW: (&str, &str) = ("cert.create", "MG2002I");
    pub const BOT_JOIN_FAILURE: (&str, &str) = ("bot.join", "MG2001W");
    pub const AGENT_JOIN: (&str, &str) = ("agent.join", "MG2003I");
    pub const AGENT_JOIN_FAILURE: (&str, &str) = ("agent.join", "MG2003W");
    /// An agent announced (or declared at join) an app outside its scope: not routed.
    pub const AGENT_ANNOUNCE_DENIED: (&str, &str) = ("agent.announce.denied", "MG2004W");
    /// An agent shipped an event it may not record: not stored.
    pub const AGENT_EVENT_REFUSED: (&str, &str) = ("agent.event.refused", "MG2005W");
    pub const AGENT_GENERATION_MISMATCH: (&str, &str) =
        ("agent.lock.generation_mismatch", "MG4003W");
    pub const LOCK_CREATE: (&str, &str) = ("lock.create", "MG4000I");
    pub const LOCK_DELETE: (&str, &str) = ("lock.delete", "MG4001I");
    pub const BOT_GENERATION_MISMATCH: (&str, &str) = ("bot.lock.generation_mismatch", "MG4002W");
    pub const MCP_SESSION_START: (&str, &str) = ("mcp.session.start", "MG5000I");
    pub const MCP_SESSION_END: (&str, &str) = ("mcp.session.end", "MG5001I");
    /// A session whose MCP server exited (`reason` says how).
    pub const MCP_SESSION_FAILED: (&str, &str) = ("mcp.session.end", "MG5001E");
    /// A live session ended by the gateway (a lock).
    pub const MCP_SESSION_TERMINATED: (&str, &str) = ("mcp.session.end", "MG5001W");
    /// An allowed request that succeeded.
    pub const MCP_REQUEST: (&str, &str) = ("mcp.session.request", "MG5002I");
    /// An allowed request that the upstream answered with an error (or never answered).
    pub const MCP_REQUEST_FAILED: (&str, &str) = ("mcp.session.request", "MG5002E");
    /// A request the gateway denied or refused.
    pub const MCP_REQUEST_DENIED: (&str, &str) = ("mcp.session.request", "MG5003W");
    /// A forwarded request whose answer was never recorded because a gateway process
    /// stopped (`outcome: interrupted`): it may or may not have run.
    pub const MCP_REQUEST_INTERRUPTED: (&str, &str) = ("mcp.session.request", "MG5005E");
    /// A client notification the gateway refused (e.g. a request method without an id).
    pub const MCP_NOTIFICATION_DENIED: (&str, &str) = ("mcp.session.notification", "MG5004W");
    pub const MCP_NOTIFICATION: (&str, &str) = ("mcp.session.notification", "MG5004I");
    /// A tool's definition changed (or a new one appeared on a strict app): held until an
    /// admin approves it.
    pub const MCP_TOOL_DRIFT: (&str, &str) = ("mcp.tool.drift", "MG5006W");
    /// An admin approved a held tool definition.
    pub const MCP_TOOL_APPROVE: (&str, &str) = ("mcp.tool.approve", "MG5007I");
    /// A dashboard session began (a login at `/login`).
    pub const WEB_SESSION_START: (&str, &str) = ("web.session.start", "MG6000I");
    /// A dashboard session ended: logout (`reason: logout`) or a lock (`reason: locked`).
    pub const WEB_SESSION_END: (&str, &str) = ("web.session.end", "MG6001I");
    /// Someone read the audit log in the dashboard (`view` says which page, with its filter).
    pub const AUDIT_VIEW: (&str, &str) = ("audit.view", "MG6002I");
    /// Someone exported the audit log (`format`, the filter and how many rows).
    pub const AUDIT_EXPORT: (&str, &str) = ("audit.export", "MG6003I");
    /// The audit chain broke since the last checkpoint (`seq`, `problem`): no checkpoint
    /// is signed over it.
    pub const AUDIT_CHAIN_BROKEN: (&str, &str) = ("audit.chain.broken", "MG6004E");
    /// Someone searched the log for the events that held a secret (the value is not kept).
    pub const AUDIT_MATCH_SECRET: (&str, &str) = ("audit.match_secret", "MG6005I");
    /// An OAuth client was registered (`via`: `dcr`, dynamic registration, or `admin`).
    pub const OAUTH_CLIENT_CREATE: (&str, &str) = ("oauth.client.create", "MG7000I");
    /// An admin removed an OAuth client (its grants end with it).
    pub const OAUTH_CLIENT_DELETE: (&str, &str) = ("oauth.client.delete", "MG7001I");
    /// A person let an OAuth client act for them on an app (an authorization code issued).
    pub const OAUTH_GRANT: (&str, &str) = ("oauth.grant", "MG7002I");
    /// Tokens issued to an OAuth client (`grant_type`: `authorization_code`, `refresh_token`).
    pub const OAUTH_TOKEN: (&str, &str) = ("oauth.token.create", "MG7003I");
    /// A used authorization code or refresh token came back: the whole grant is revoked.
    pub const OAUTH_TOKEN_REUSE: (&str, &str) = ("oauth.token.reuse", "MG7004W");
    /// A grant was revoked (RFC 7009, by its client; or by the reuse of a token).
    pub const OAUTH_TOKEN_REVOKE: (&str, &str) = ("oauth.token.revoke", "MG7005I");
}

/// One audit event. Common fields are typed; the rest of the type's fields live in `fields`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id; storing the same id twice keeps one copy (idempotent shipping).
    pub id: String,
    /// RFC 3339 with microseconds, UTC.
    #[serde(with = "rfc3339_micros")]
    pub time: SystemTime,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    pub cluster: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_kind: Option<IdentityKind>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub success: bool,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl AuditEvent {
    /// The names of the event's own fields in its JSON: another field of the same name
    /// would stand for one of them (see how the store keeps such a field aside).
    pub const OWN_FIELDS: [&'static str; 9] = [
        "id",
        "time",
        "type",
        "code",
        "cluster",
        "user",
        "user_kind",
        "roles",
        "success",
    ];
}

/// A new random id for an event or a session: 128 bits from the system CSPRNG, as hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG failing is unrecoverable; the id would then still be unique enough
    // within a process not to corrupt state (ids are never secrets).
    let _ = getrandom::getrandom(&mut bytes);
    crate::hex(&bytes)
}

/// A new id for an event at `time`: 32 hex digits like [`random_id`]'s, of which the first
/// 12 are the time in milliseconds and the other 80 bits random (as in a UUIDv7). The
/// audit log is indexed by id: ids that grow with time are written at the end of that
/// index, where random ones would each change a page of it anywhere (a page written to
/// the log's write-ahead file per event once the log outgrows the cache).
pub fn event_id(time: SystemTime) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let millis = crate::clock::unix_micros(time).max(0) as u64 / 1000;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    if getrandom::getrandom(&mut bytes[6..]).is_err() {
        // Unique within the process all the same (ids are never secrets).
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[8..].copy_from_slice(&n.to_be_bytes());
    }
    crate::hex(&bytes)
}

impl AuditEvent {
    /// A new event of type and code `(kind, code)` about what `who` did, with a new id.
    pub fn new(
        cluster: &str,
        time: SystemTime,
        (kind, code): (&str, &str),
        who: &Claims,
        success: bool,
        mut fields: Map<String, Value>,
    ) -> AuditEvent {
        if let Some(client) = &who.oauth_client {
            fields.insert("oauth_client".into(), Value::from(client.as_str()));
        }
        AuditEvent {
            id: event_id(time),
            time,
            kind: kind.into(),
            code: code.into(),
            cluster: cluster.into(),
            user: who.name.clone(),
            user_kind: Some(who.kind),
            roles: who.roles.clone(),
            success,
            fields,
        }
    }

    /// A string field of the event's extra fields, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

/// A search over the audit log; every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only the event with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Only events at or after this time (µs since the epoch).
    pub since_micros: Option<i64>,
    /// Only events before this time (µs since the epoch, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_micros: Option<i64>,
    pub user: Option<String>,
    /// Only events of identities of this kind (`user`, `bot`, `host`): with `user`, one
    /// identity, not its namesakes of other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_kind: Option<String>,
    /// Only events of an identity holding this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub app: Option<String>,
    /// A tool name, or a glob of them (`*` any run of characters, `?` one).
    pub tool: Option<String>,
    /// The MCP method (`tools/call`) or, for other events, their `method` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub decision: Option<String>,
    /// Only events of this MCP session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Free text anywhere in the event's JSON, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Newest events first, at most this many (default 1000).
    pub limit: Option<u32>,
}

/// Where a page of the audit log starts, for keyset paging: events are ordered newest
/// first by (time, position), and a page continues from the last row of the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Page {
    /// The newest events.
    #[default]
    Newest,
    /// Events ordered after (older than) this one.
    Older(Cursor),
    /// Events ordered before (newer than) this one.
    Newer(Cursor),
    /// Events stored after this position, in the order they were stored (for a live tail).
    After(i64),
}

/// An event's place in the audit log's order: its time, then the position it was stored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time_us: i64,
    pub pos: i64,
}

impl Cursor {
    /// `TIME.POS`, as it goes in a URL.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.time_us, self.pos)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (t, p) = s.split_once('.')?;
        Some(Cursor {
            time_us: t.parse().ok()?,
            pos: p.parse().ok()?,
        })
    }
}

/// RFC 3339 timestamps with microsecond precision: `2026-11-21T10:00:00.123456Z`.
pub mod rfc3339_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;
    use time::OffsetDateTime;

    pub(crate) const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );

    /// `t` as `2026-12-07T20:10:35.089581Z`. Each event is serialized with its time on a
    /// call's path: the digits are written directly (the format description's interpreter
    /// cost a microsecond per call); years outside 0–9999 take the general path.
    pub fn format(t: SystemTime) -> String {
        let dt = OffsetDateTime::from(t);
        let (year, month, day) = dt.to_calendar_date();
        let Ok(year @ 0..=9999) = u32::try_from(year) else {
            return dt
                .format(FORMAT)
                .unwrap_or_else(|_| String::from("invalid-time"));
        };
        let (hour, minute, second, micro) = dt.to_hms_micro();
        let mut out = String::with_capacity(27);
        let mut digits = |n: u32, width: u32, then: Option<char>| {
            for place in (0..width).rev() {
                out.push(char::from(b'0' + (n / 10u32.pow(place) % 10) as u8));
            }
            out.extend(then);
        };
        digits(year, 4, Some('-'));
        digits(u32::from(u8::from(month)), 2, Some('-'));
        digits(u32::from(day), 2, Some('T'));
        digits(u32::from(hour), 2, Some(':'));
        digits(u32::from(minute), 2, Some(':'));
        digits(u32::from(second), 2, Some('.'));
        digits(micro, 6, Some('Z'));
        out
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        let dt = OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Ok(dt.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_secs;
    use std::time::Duration;

    /// Times are written as the format description writes them, across the years.
    #[test]
    fn times_are_written_as_rfc3339_with_microseconds() {
        use super::rfc3339_micros::{FORMAT, format};
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut times = vec![
            std::time::SystemTime::UNIX_EPOCH,
            from_unix_secs(1_800_000_000) + Duration::from_micros(999_999),
            from_unix_secs(253_402_300_799) + Duration::from_nanos(999_999_999),
        ];
        for _ in 0..10_000 {
            // Up to the year 9999.
            times.push(
                std::time::SystemTime::UNIX_EPOCH
                    + Duration::from_micros(next() % 253_402_300_800_000_000),
            );
        }
        for t in times {
            let general = time::OffsetDateTime::from(t).format(FORMAT).unwrap();
            assert_eq!(format(t), general);
        }
        assert_eq!(
            format(from_unix_secs(1_800_000_000) + Duration::from_micros(89_581)),
            "2027-01-15T08:00:00.089581Z"
        );
    }

    #[test]
    fn event_ids_are_hex_and_grow_with_time() {
        let t = from_unix_secs(1_800_000_000);
        let (a, b) = (event_id(t), event_id(t));
        assert_ne!(
            a, b,
            "ids of the same millisecond differ by their random part"
        );
        let later = event_id(t + Duration::from_millis(1));
        for id in [&a, &b, &later] {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        assert_eq!(&a[..12], "01a3185c5000", "the time in milliseconds, first");
        assert!(later > a && later > b, "{later} after {a} and {b}");
        assert_eq!(crate::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn event_json_has_the_contract_fields() {
        let mut fields = Map::new();
        fields.insert("method".into(), Value::from("password"));
        let ev = AuditEvent {
            id: "e1".into(),
            time: from_unix_secs(1_700_000_000) + Duration::from_micros(42),
            kind: "user.login".into(),
            code: "MG1000I".into(),
            cluster: "example.local".into(),
            user: "alice".into(),
            user_kind: Some(IdentityKind::User),
            roles: vec!["dev".into()],
            success: true,
            fields,
        };
        let v: Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000042Z");
        assert_eq!(v["type"], "user.login");
        assert_eq!(v["user_kind"], "user");
        assert_eq!(v["method"], "password");
        let back: AuditEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
