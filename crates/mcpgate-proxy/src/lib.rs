//! mcpgate-proxy
