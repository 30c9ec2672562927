"""Namer and transformer plugins: turn /#/ and /$/ names into observable address sets."""
