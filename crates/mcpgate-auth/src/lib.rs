//! mcpgate-auth
