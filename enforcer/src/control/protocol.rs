//! Control protocol, version 1 (documented in docs/CONTROL-PROTOCOL.md).
//!
//! A client sends one request per line, a JSON object with `"version": 1` and a
//! `"command"`; the daemon answers each with one JSON line: `{"version":1,"ok":true,...}`
//! or `{"version":1,"ok":false,"error":"..."}`. After `subscribe` the connection carries
//! the audit stream (JSON lines) until the client closes it.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Programs, attachments, policy identity, counters, warnings.
    Status,
    /// Re-read the policy file and apply it; with `confirm_within_secs`, restore the
    /// previous policy unless `confirm` arrives in time.
    Reload {
        #[serde(default)]
        confirm_within_secs: Option<u64>,
    },
    /// Keep a policy applied with a confirmation deadline.
    Confirm,
    /// Follow the audit stream on this connection, starting with the recent lines the
    /// daemon still holds from `since_unix_ns` on (if given).
    Subscribe {
        #[serde(default, deserialize_with = "since_ns")]
        since_unix_ns: Option<u128>,
    },
    /// The policy in force as `enforcer diff` compares it (grants included).
    Policy,
    /// The verdict for a described packet under the live policy.
    Explain {
        query: crate::policy::explain::Query,
    },
    /// Allow a source prefix (`from`) or a cgroup on a rule for `for_secs` seconds.
    Grant {
        rule: String,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        cgroup: Option<String>,
        for_secs: u64,
        reason: String,
    },
    /// The grants in force, with time left.
    Grants,
    /// End a grant early.
    Revoke { id: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Reads `since_unix_ns` as a u64 (nanoseconds since the epoch fit one until 2554): serde
/// buffers a flattened, tagged request in a form that cannot hold a u128.
fn since_ns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.map(u128::from))
}

/// Parses one request line, checking the version.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON request: {e}"))?;
    match v.get("version").and_then(|v| v.as_u64()) {
        Some(1) => {}
        Some(other) => {
            return Err(format!(
                "unsupported protocol version {other}; this daemon speaks {VERSION}"
            ))
        }
        None => return Err("the request has no \"version\" (this daemon speaks version 1)".into()),
    }
    // The version is checked; the rest is the request itself.
    let mut v = v;
    if let Some(m) = v.as_object_mut() {
        m.remove("version");
    }
    let request =
        serde_json::from_value::<Request>(v.clone()).map_err(|e| format!("bad request: {e}"))?;
    // serde ignores unknown fields of tagged unit variants: compare with what the request
    // holds, so a misspelt option is an error rather than silently dropped.
    let known = serde_json::to_value(&request).map_err(|e| format!("bad request: {e}"))?;
    if let (Some(given), Some(known)) = (v.as_object(), known.as_object()) {
        if let Some(k) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(format!(
                "bad request: unknown field `{k}` for command {}",
                known["command"]
            ));
        }
    }
    Ok(request)
}

/// A success response carrying `body`'s fields.
pub fn ok(body: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"version": VERSION, "ok": true});
    if let (Some(m), serde_json::Value::Object(b)) = (v.as_object_mut(), body) {
        m.extend(b);
    }
    v
}

pub fn error(message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"version": VERSION, "ok": false, "error": message.into()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_request(r#"{"version":1,"command":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(r#"{"version":1,"command":"reload","confirm_within_secs":60}"#),
            Ok(Request::Reload {
                confirm_within_secs: Some(60)
            })
        );
        assert_eq!(
            parse_request(
                r#"{"version":1,"command":"subscribe","since_unix_ns":1763900000000000000}"#
            ),
            Ok(Request::Subscribe {
                since_unix_ns: Some(1_763_900_000_000_000_000)
            })
        );
        assert!(parse_request(r#"{"version":2,"command":"status"}"#)
            .unwrap_err()
            .contains("unsupported protocol version 2"));
        assert!(parse_request(r#"{"command":"status"}"#)
            .unwrap_err()
            .contains("no \"version\""));
        assert!(parse_request("status")
            .unwrap_err()
            .contains("not a JSON request"));
        assert!(parse_request(r#"{"version":1,"command":"format-disk"}"#)
            .unwrap_err()
            .contains("bad request"));
        assert!(
            parse_request(r#"{"version":1,"command":"status","force":true}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse_request(r#"{"version":1,"command":"reload","confirm_within":60}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
