"""Reading what users give (JSON, small text files, images) and writing what we make (atomically), safely."""
