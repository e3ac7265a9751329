//! mcpgate-policy
