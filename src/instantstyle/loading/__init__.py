"""Where models come from (``hub``, ``loader``, ``extras``) and where they live (``runtime``, ``memory``, ``cache``)."""
