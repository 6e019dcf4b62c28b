"""The controller: the loop (tick, store writer, host links), the RPC server and the client that reaches it (docs/protocol.md)."""
