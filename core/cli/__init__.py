"""The batch CLI: the parser assembled from each capability's commands, and the output helpers they share (docs/cli.md)."""
