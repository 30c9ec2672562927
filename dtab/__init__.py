"""The dtab language: paths, name trees, dtabs, parsing, printing, lookup, binding, delegation. Pure."""
