"""Namer and transformer plugins: turn /#/ and /$/ names into observable address sets.

Modules: :mod:`namers.base` (the ``Namer`` base class, per-name observable state with "last good wins",
the bounded name table), :mod:`namers.fsformat` (the pure ``io.l5d.fs`` file parser),
:mod:`namers.fs` (the watching ``io.l5d.fs`` namer; registered as ``"namers.fs:from_config"``) and
:mod:`namers.inet` (asynchronous DNS for ``/$/inet``, ``/$/fixedinet`` and ``/$/io.buoyant.rinet``).
"""
