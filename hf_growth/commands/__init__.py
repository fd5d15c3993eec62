"""Sub-commands of the ``hf-growth`` CLI, one module each (``add_parser`` + ``run``)."""
