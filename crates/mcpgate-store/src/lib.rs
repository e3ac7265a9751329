//! mcpgate-store
