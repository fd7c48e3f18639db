"""Dream: decode reconstructed and blended embeddings into images."""
