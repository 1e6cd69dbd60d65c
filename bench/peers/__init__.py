"""Other implementations of the same service, run by the same driver for side-by-side figures."""
