"""The morning report: a thin renderer of ``summary.json`` and the stages' own figures."""
