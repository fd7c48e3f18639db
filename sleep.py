#!/usr/bin/env python3
"""sleep: turn a day of video and audio into a searchable episodic memory, every night.

    python sleep.py --date 2026-01-15      # run one night
    python sleep.py status                 # what ran, and how long it took
    python sleep.py demo                   # a sample day from shipped footage
"""
import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
