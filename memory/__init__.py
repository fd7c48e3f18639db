"""Episodic memory: the only package that speaks SQL or opens embedding shards."""
