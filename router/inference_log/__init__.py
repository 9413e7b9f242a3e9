"""The inference table: one row per request, written off the request path."""
