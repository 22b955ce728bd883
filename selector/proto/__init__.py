"""gRPC API of the selector (package `routoo.selector.v1`); generated modules, see generate.py."""
