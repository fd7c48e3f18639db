"""The nightly spine: config, paths, the stage list and the runner that drives one night."""
