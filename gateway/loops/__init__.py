"""Background loops: leadership, admission (and later reconciliation and webhook delivery)."""
