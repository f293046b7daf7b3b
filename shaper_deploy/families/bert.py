"""BERT: the defaults of :class:`~shaper_deploy.families.Family`."""

from . import Family

BERT = Family(name="bert", model_types=("bert",), class_prefix={"bert": "Bert"})
