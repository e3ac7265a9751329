//! mcpgate-pki
