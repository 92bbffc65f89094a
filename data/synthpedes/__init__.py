"""SynthPedes: the embedded pedestrian world (generator, caption grammar, caption-only ceiling).

>>> from data.synthpedes import WorldConfig, generate
>>> generate("synthpedes", WorldConfig(seed=0))   # doctest: +SKIP
"""

from .ceiling import AnnotationError, ambiguity, ceiling_scores, load_annotations, split_annotations
from .generate import WorldExistsError, generate, plan
from .world import WorldConfig

__all__ = ["AnnotationError", "WorldConfig", "WorldExistsError", "ambiguity", "ceiling_scores", "generate",
           "load_annotations", "plan", "split_annotations"]
