"""The stages: one module per stage, each registering itself (pipeline.runtime.registry) with its
name, role, config section and links. The default frame path is capture -> preprocess -> detect ->
track -> record; the view is a consumer beside it. Source kinds live in stages/sources/.

A stage module imports only the runtime (pipeline.runtime) and models, and only the detect stage
imports torch. Modules here that register no stage (annotate, model_input, sources) are helpers.
"""
