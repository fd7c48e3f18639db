"""Sentence embeddings of free text (the journal): all-MiniLM-L6-v2 from an installed wheel."""
