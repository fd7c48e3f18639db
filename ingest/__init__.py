"""Ingest: split a day of recordings into clips, frames and audio segments with FFmpeg."""
