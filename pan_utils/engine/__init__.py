"""The engine: what a user imports to study their own model.

Padding geometry and discovery (``geometry``, ``padding``), switching the padding
policy (``policy``), hooks and eval mode as context managers (``hooks``), the streaming
scan and its compiled kernel (``scan``, ``kernels``), the decision rule and PAN types
(``rule``, ``types``), ablation (``ablate``), activation maps (``maps``), models and
probe images (``models``, ``probes``), where a model runs and the state of its weights
(``state``). Nothing here imports the study.
"""
