"""Pure, sans-I/O readers of the pub/sub protocols spoken over proxied WebSockets."""
