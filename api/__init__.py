"""The memory from Python: what ``sleep.py query | forget | doctor | status | memory`` print, as data.

    >>> from api import query
    >>> hits = query("~/sleep", clip=12, topk=5, date_from="2026-01-10")
    >>> [h.as_dict() for h in hits]  # what `sleep.py query --clip 12 --topk 5 --from 2026-01-10 --json` prints

Every function takes the root folder first; errors a person can act on are
:class:`core.errors.UsageError` (the CLI prints them in one line and exits 2). Running a
night is :func:`pipeline.runner.run_night`, a layer above this one.
"""
from api.dreams import dream_clips
from api.journal import JournalHit, journal_add, journal_query
from api.maintenance import doctor, forget, plan_forget
from api.neurons import list_neurons, name_neuron, show_neuron
from api.nights import status
from api.search import query
from api.versions import reembed, versions
from memory import Hit

__all__ = ["Hit", "JournalHit", "doctor", "dream_clips", "forget", "journal_add", "journal_query", "list_neurons", "name_neuron",
           "plan_forget", "query", "reembed", "show_neuron", "status", "versions"]
