"""The ``shaperctl`` command line (installed as ``shaper_deploy.cli``)."""
