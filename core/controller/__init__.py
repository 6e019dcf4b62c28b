"""The controller: the loop (tick, store writer, host links), the services capabilities plug in, the RPC server and the client (docs/architecture.md)."""
