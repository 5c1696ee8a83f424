"""The whole chain from one recipe file: ``qingbert run`` (:mod:`qingbert.pipeline.recipe`,
:mod:`qingbert.pipeline.runner`) and ``qingbert report`` (:mod:`qingbert.pipeline.report`)."""
