//! The JSON-RPC envelope parser on arbitrary bytes: never panics; what it accepts is
//! consistent (a method or name it returns is a slice of the input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = mcpgate_mcp::Limits { max_bytes: 1 << 16, max_depth: 32 };
    if let Ok(env) = mcpgate_mcp::parse(data, &limits) {
        let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
        for s in [env.method, env.name].into_iter().flatten() {
            assert!(text.contains(s));
        }
        if env.method == Some("tools/call") {
            assert!(env.name.is_some());
        }
    }
});
