//! The envelope parser on arbitrary and mutated input, in CI (the cargo-fuzz target in
//! `fuzz/` explores further): it never panics, and it never accepts a message whose
//! tool name differs from what a strict JSON parser reads.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use mcpgate_mcp::{Limits, parse};
use proptest::prelude::*;

const SEED: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":[1,{"b":null}]}}}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&data, &Limits::default());
    }

    #[test]
    fn mutations_agree_with_serde_json(pos in 0usize..SEED.len(), byte in prop::sample::select(b"{}[]\",:\\\\ nNMmeE0a_".to_vec()), insert in any::<bool>()) {
        let mut data = SEED.as_bytes().to_vec();
        if insert { data.insert(pos, byte) } else { data[pos] = byte }
        if let Ok(env) = parse(&data, &Limits::default()) {
            // Whatever we accept, a standard parser reads the same method and tool name.
            let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            prop_assert_eq!(v.get("method").and_then(|m| m.as_str()), env.method);
            if env.method == Some("tools/call") {
                prop_assert_eq!(v["params"]["name"].as_str(), env.name);
            }
        }
    }
}

mod gate {
    //! The gate against a reference model: for any sequence of client and server messages,
    //! no request for a denied tool, resource or prompt reaches the server, no request
    //! method reaches it without an id, and no list the client receives shows a denied entry.

    use mcpgate_mcp::gate::{Audit, Out, Verdict};
    use mcpgate_mcp::{Gate, Limits, Rules};
    use mcpgate_policy::Subject;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::time::Instant;

    /// The model: only `a` is allowed, whatever the kind.
    fn allowed(value: &str) -> bool {
        value == "a" || value == "res://a"
    }

    struct Model;

    impl Rules for Model {
        fn decide(&self, _: Subject, value: &str) -> Result<(), String> {
            if allowed(value) {
                Ok(())
            } else {
                Err("denied".into())
            }
        }

        fn decide_request(
            &self,
            subject: Subject,
            value: &str,
            _: Option<&serde_json::value::RawValue>,
        ) -> Result<Option<String>, String> {
            self.decide(subject, value).map(|()| None)
        }

        fn offered_tool(&self, _: &Value) -> Result<(), String> {
            Ok(())
        }

        fn offered_instructions(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum Event {
        Client {
            method: &'static str,
            value: &'static str,
            id: Option<&'static str>,
        },
        /// The server answers the n-th request it received (or a made-up id) with full lists.
        Answer {
            nth: usize,
            made_up: Option<&'static str>,
        },
        ServerRequest {
            id: &'static str,
        },
        /// The client answers a server request by the n-th id it saw (or a made-up one).
        ClientAnswer {
            nth: usize,
            made_up: Option<&'static str>,
        },
    }

    const METHODS: [&str; 11] = [
        "tools/call",
        "resources/read",
        "resources/subscribe",
        "prompts/get",
        "completion/complete",
        "tools/list",
        "resources/list",
        "prompts/list",
        "resources/templates/list",
        "ping",
        "notifications/cancelled",
    ];
    const VALUES: [&str; 5] = ["a", "b", "res://a", "res://b", "A"];
    const IDS: [&str; 8] = [
        "1",
        "-0",
        "0",
        "\"a\"",
        "\"\\u0061\"",
        "\"a\\/b\"",
        "\"a/b\"",
        "2",
    ];

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (prop::sample::select(METHODS.to_vec()), prop::sample::select(VALUES.to_vec()),
                  prop::option::weighted(0.8, prop::sample::select(IDS.to_vec())))
                .prop_map(|(method, value, id)| Event::Client { method, value, id }),
            3 => (0usize..8, prop::option::weighted(0.2, prop::sample::select(IDS.to_vec())))
                .prop_map(|(nth, made_up)| Event::Answer { nth, made_up }),
            1 => prop::sample::select(IDS.to_vec()).prop_map(|id| Event::ServerRequest { id }),
            1 => (0usize..4, prop::option::weighted(0.3, prop::sample::select(IDS.to_vec())))
                .prop_map(|(nth, made_up)| Event::ClientAnswer { nth, made_up }),
        ]
    }

    fn client_line(method: &str, value: &str, id: Option<&str>) -> String {
        let params = match method {
            "tools/call" | "prompts/get" => format!(r#"{{"name":"{value}","arguments":{{}}}}"#),
            "resources/read" | "resources/subscribe" => format!(r#"{{"uri":"{value}"}}"#),
            "completion/complete" if value.starts_with("res") => {
                format!(
                    r#"{{"ref":{{"type":"ref/resource","uri":"{value}"}},"argument":{{"name":"x","value":""}}}}"#
                )
            }
            "completion/complete" => {
                format!(
                    r#"{{"ref":{{"type":"ref/prompt","name":"{value}"}},"argument":{{"name":"x","value":""}}}}"#
                )
            }
            "notifications/cancelled" => format!(r#"{{"requestId":{}}}"#, id.unwrap_or("1")),
            _ => "{}".to_string(),
        };
        match id.filter(|_| !method.starts_with("notifications/")) {
            Some(id) => {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
            }
            None => format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params}}}"#),
        }
    }

    const FULL: &str = r#"{"tools":[{"name":"a"},{"name":"b"},{"name":"A"}],"resources":[{"uri":"res://a"},{"uri":"res://b"},{"name":"x"}],"resourceTemplates":[{"uriTemplate":"res://a"},{"uriTemplate":"res://b"}],"prompts":[{"name":"a"},{"name":"b"}]}"#;

    fn bytes(v: Verdict, original: &str) -> Option<Value> {
        match v {
            Verdict::Forward(Out::Original) => Some(serde_json::from_str(original).unwrap()),
            Verdict::Forward(Out::Bytes(b)) => Some(serde_json::from_slice(&b).unwrap()),
            _ => None,
        }
    }

    fn check_to_server(m: &Value) -> Result<(), TestCaseError> {
        let method = m.get("method").and_then(Value::as_str);
        if let Some(method) = method.filter(|m| !m.starts_with("notifications/")) {
            prop_assert!(m.get("id").is_some(), "request without id forwarded: {m}");
            let p = &m["params"];
            let subject = match method {
                "tools/call" | "prompts/get" => p["name"].as_str(),
                "resources/read" | "resources/subscribe" => p["uri"].as_str(),
                "completion/complete" => p["ref"]["name"].as_str().or(p["ref"]["uri"].as_str()),
                _ => Some("a"),
            };
            prop_assert!(
                subject.is_some_and(allowed),
                "denied request forwarded: {m}"
            );
        }
        Ok(())
    }

    fn check_to_client(m: &Value) -> Result<(), TestCaseError> {
        for (list, key) in [
            ("tools", "name"),
            ("prompts", "name"),
            ("resources", "uri"),
            ("resourceTemplates", "uriTemplate"),
        ] {
            if let Some(entries) = m["result"][list].as_array() {
                for e in entries {
                    prop_assert!(
                        e[key].as_str().is_some_and(allowed),
                        "denied entry shown: {m}"
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn no_denied_request_reaches_the_server_and_no_denied_entry_the_client(
            events in prop::collection::vec(event(), 1..40)
        ) {
            let mut g = Gate::new(Limits::default(), Limits::default());
            let now = Instant::now();
            let mut at_server: Vec<Value> = Vec::new();
            let mut at_client: Vec<Value> = Vec::new();
            for e in events {
                match e {
                    Event::Client { method, value, id } => {
                        let line = client_line(method, value, id);
                        let step = g.on_client(line.as_bytes(), &Model, now);
                        if let Audit::Begin { gid, .. } = step.audit {
                            g.confirm(gid);
                        }
                        if let Some(m) = bytes(step.verdict, &line) {
                            check_to_server(&m)?;
                            at_server.push(m);
                        }
                    }
                    Event::Answer { nth, made_up } => {
                        let requests: Vec<&Value> = at_server.iter().filter(|m| m.get("method").is_some() && m.get("id").is_some()).collect();
                        let id = match made_up {
                            Some(id) => id.to_string(),
                            None => match requests.get(nth) {
                                Some(m) => m["id"].to_string(),
                                None => continue,
                            },
                        };
                        // A list answer holds every entry; any other answer is opaque content
                        // (only list answers are the gateway's to filter).
                        let idv: Value = serde_json::from_str(&id).unwrap_or(Value::Null);
                        let method = requests.iter().find(|m| m["id"] == idv).and_then(|m| m["method"].as_str());
                        let result = match method {
                            Some(m) if !m.ends_with("/list") => r#"{"content":[]}"#,
                            _ => FULL,
                        };
                        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
                        let step = g.on_server(line.as_bytes(), &Model, now);
                        if let Some(m) = bytes(step.verdict, &line) {
                            check_to_client(&m)?;
                            at_client.push(m);
                        }
                    }
                    Event::ServerRequest { id } => {
                        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"roots/list"}}"#);
                        let step = g.on_server(line.as_bytes(), &Model, now);
                        if let Some(m) = bytes(step.verdict, &line) {
                            at_client.push(m);
                        }
                    }
                    Event::ClientAnswer { nth, made_up } => {
                        let id = match made_up {
                            Some(id) => id.to_string(),
                            None => match at_client.iter().filter(|m| m.get("method").is_some() && m.get("id").is_some()).nth(nth) {
                                Some(m) => m["id"].to_string(),
                                None => continue,
                            },
                        };
                        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{FULL}}}"#);
                        let step = g.on_client(line.as_bytes(), &Model, now);
                        if let Some(m) = bytes(step.verdict, &line) {
                            // Only answers to requests the server made reach it.
                            prop_assert!(m.get("id").is_some());
                            at_server.push(m);
                        }
                    }
                }
            }
        }
    }
}
