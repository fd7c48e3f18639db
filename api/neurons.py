"""Memory-trace neurons from Python: what ``sleep.py neuron list | show | name | unname`` print, as data.

A neuron is one latent of the sparse autoencoder (space ``sae``), followed from night to
night by its decoder direction (:mod:`memory.neurons`): its id stays, and so does the name
a person gives it, while the network is retrained. Figures are read from the space's
active version (the one queries search).
"""
from __future__ import annotations

from api.args import Day, Root, date_of, memory_of
from core.errors import UsageError


def _open(root: Root):
    from memory import open_database

    paths = memory_of(root)
    return paths, open_database(paths.database)


def _version(engine, model_version: str | None) -> tuple[str, int]:
    from memory import active_version, space_dim

    version = model_version or active_version(engine, "sae")
    dim = space_dim(engine, "sae", version) if version else None
    if dim is None:
        raise UsageError("no memory traces yet (the sae stage has not run)" if model_version is None
                         else f"--model-version {model_version}: no such sae version")
    return version, dim


def _top(engine, stats, latent: int, count: int) -> list[dict]:
    """A latent's strongest moments, one per clip."""
    from memory import shard_row_moments

    best = stats.top.get(latent, [])
    about = shard_row_moments(engine, [(shard_id, row) for _, shard_id, row in best])
    out, seen = [], set()
    for activation, shard_id, row in best:
        moment = about.get((shard_id, row))
        if moment is None or moment["clip_id"] in seen:
            continue
        seen.add(moment["clip_id"])
        out.append({"activation": round(activation, 4), **moment})
        if len(out) == count:
            break
    return out


def list_neurons(root: Root, *, date: Day | None = None, moments: int = 3, model_version: str | None = None,
                 include_silent: bool = False) -> dict:
    """Every neuron of the searched version: id, name, how often it fires, its top moments.

    Args:
        root: the folder holding ``memory/``.
        date: count and rank only that day's moments (``None``: the whole memory).
        moments: top moments per neuron (distinct clips).
        model_version: a ``sae@D`` version (default: the active one).
        include_silent: also list neurons that fire for none of the moments counted.
    Returns:
        ``{"version", "rows", "date", "neurons": [{"id", "name", "latent", "fires", "share", "top"}]}``,
        neurons by how often they fire; ``share`` is ``fires / rows``.
    Raises:
        UsageError: no memory, or no sae version yet.
    """
    from memory import latent_stats, neuron_latents, neuron_names

    day = date_of(date, "--date").isoformat() if date is not None else None
    if moments < 0:
        raise UsageError(f"--moments {moments}: must be 0 or more")
    paths, engine = _open(root)
    try:
        version, dim = _version(engine, model_version)
        ids = {latent: neuron_id for neuron_id, latent in neuron_latents(engine, version).items()}
        named = neuron_names(engine)
        stats = latent_stats(engine, paths, version, date_from=day, date_to=day, moments=max(moments, 1))
        rows = stats.rows if stats else 0
        neurons = []
        for latent in range(dim):
            fires = int(stats.fires[latent]) if stats else 0
            if fires == 0 and not include_silent:
                continue
            neuron_id = ids.get(latent, latent)
            neurons.append({"id": neuron_id, "name": named.get(neuron_id), "latent": latent, "fires": fires,
                            "share": round(fires / rows, 4) if rows else 0.0,
                            "top": _top(engine, stats, latent, moments) if stats and moments else []})
        neurons.sort(key=lambda n: (-n["fires"], n["id"]))
        return {"version": version, "date": day, "rows": rows, "neurons": neurons}
    finally:
        engine.dispose()


def show_neuron(root: Root, neuron: int | str, *, moments: int = 8, model_version: str | None = None) -> dict:
    """One neuron: its name, when it was born and last seen, its match cosine night by night, and
    (when it is in the searched version) how often it fires and its top moments.

    Raises:
        UsageError: no such neuron.
    """
    from memory import (
        NeuronError,
        find_neuron,
        latent_stats,
        neuron_history,
        neuron_latents,
    )

    paths, engine = _open(root)
    try:
        try:
            record = find_neuron(engine, neuron)
        except NeuronError as exc:
            raise UsageError(str(exc)) from None
        try:
            version, _ = _version(engine, model_version)
        except UsageError:
            if model_version is not None:
                raise
            version = None  # no vectors (yet, or any more): the neuron's record and history only
        latent = neuron_latents(engine, version).get(record.id) if version else None
        result = {"id": record.id, "name": record.name, "born_version": record.born_version,
                  "last_version": record.last_version,
                  "named_at": record.named_at.isoformat(timespec="seconds") if record.named_at else None,
                  "version": version, "latent": latent, "history": neuron_history(engine, record.id),
                  "fires": None, "rows": None, "top": []}
        if latent is not None:
            stats = latent_stats(engine, paths, version, latents=[latent], moments=max(moments, 1))
            if stats is not None:
                result.update(fires=int(stats.fires[0]), rows=stats.rows, top=_top(engine, stats, latent, moments))
        return result
    finally:
        engine.dispose()


def name_neuron(root: Root, neuron: int | str, name: str | None) -> dict:
    """Give a neuron a name (``None``: remove its name); it keeps it on later nights while matched.

    Returns:
        ``{"id", "name", "named_at"}``.
    Raises:
        UsageError: no such neuron, a name that is only digits or holds a comma, or one
            another neuron has.
    """
    from memory import NeuronError
    from memory import name_neuron as store_name

    _, engine = _open(root)
    try:
        try:
            record = store_name(engine, neuron, name)
        except NeuronError as exc:
            raise UsageError(str(exc)) from None
        return {"id": record.id, "name": record.name,
                "named_at": record.named_at.isoformat(timespec="seconds") if record.named_at else None}
    finally:
        engine.dispose()

