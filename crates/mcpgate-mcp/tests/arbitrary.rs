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
