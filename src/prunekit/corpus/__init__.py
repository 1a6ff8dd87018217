"""Text corpus pruning: steps over Arrow record batches keyed by a stable `id`, run by a local or a Ray executor."""
