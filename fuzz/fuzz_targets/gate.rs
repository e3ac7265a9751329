//! The gate on arbitrary sessions: lines alternate between the client and the server as the
//! input's bytes say. Never panics; never forwards to the server a request without an id or
//! a `tools/call` of a denied tool, and never shows the client a denied tool in a list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgate_mcp::gate::{Audit, Out, Verdict};
use mcpgate_mcp::{Gate, Limits, Rules};
use mcpgate_policy::Subject;
use std::time::Instant;

struct OnlyA;

impl Rules for OnlyA {
    fn decide(&self, _: Subject, value: &str) -> Result<(), String> {
        if value == "a" { Ok(()) } else { Err("denied".into()) }
    }
}

fn forwarded(v: Verdict, line: &[u8]) -> Option<serde_json::Value> {
    match v {
        Verdict::Forward(Out::Original) => serde_json::from_slice(line).ok(),
        Verdict::Forward(Out::Bytes(b)) => serde_json::from_slice(&b).ok(),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_bytes: 1 << 16, max_depth: 32 };
    let mut gate = Gate::new(limits, limits);
    let now = Instant::now();
    for line in data.split(|b| *b == b'\n') {
        let Some((&side, line)) = line.split_first() else { continue };
        if side & 1 == 0 {
            let step = gate.on_client(line, &OnlyA, now);
            if let Audit::Begin { gid, .. } = step.audit {
                gate.confirm(gid);
            }
            if let Some(m) = forwarded(step.verdict, line) {
                let method = m.get("method").and_then(|m| m.as_str()).unwrap_or("");
                if !method.is_empty() && !method.starts_with("notifications/") {
                    assert!(m.get("id").is_some(), "request without id forwarded");
                }
                if method == "tools/call" {
                    assert_eq!(m["params"]["name"].as_str(), Some("a"), "denied tool forwarded");
                }
            }
        } else {
            let step = gate.on_server(line, &OnlyA, now);
            if let Some(m) = forwarded(step.verdict, line)
                && let Some(tools) = m["result"]["tools"].as_array()
                && step.done.as_ref().is_some_and(|d| d.request.method == "tools/list")
            {
                for t in tools {
                    assert_eq!(t["name"].as_str(), Some("a"), "denied tool listed");
                }
            }
        }
    }
});
