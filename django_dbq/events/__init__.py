"""The write side: the append-only JobEvent ledger and the only code that appends to it."""
