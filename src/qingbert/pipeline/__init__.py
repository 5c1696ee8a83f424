"""The whole chain from one recipe file.

``recipe``: reading a recipe (YAML, ``${stage}`` references, ``--set``) and checking all of it before anything runs,
every error naming the file and line.  ``runner``: the plan (fingerprints: up to date, changed, interrupted), each
stage calling the Python function of its verb, ``run.json``.  ``report``: ``report.html`` and ``report.md`` of a run
folder.  The shipped recipes are ``recipes/*.yaml`` (``builtin:demo``, ``builtin:demo-full``, ``builtin:minirbt``).

Floor 10: imports every floor below (``serve`` ... ``errors``); never ``demo`` or ``cli``.
"""
