"""Distillation: teacher -> (assistant ->) student, general (masked-LM KD on prepared shards) and task stage.

``losses``: KD, hidden / attention losses, schedules, projections, as data (a registry by name).  ``matches``:
which teacher layer meets which student layer.  ``config``: the stages' options.  ``objectives``: the general
and task objectives the one loop trains.  ``distill``: the stages (general, two-stage with an assistant, task).

Floor 6: imports ``errors``, ``manifest``, ``training``, ``models``, ``data``, ``pretraining`` and ``tasks``.
"""
