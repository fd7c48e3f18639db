"""Search the memory by example from Python: ``query(root, clip=12)`` returns the hits that
``sleep.py query --clip 12 --json`` prints, as :class:`~memory.search.Hit` objects.

The example (a clip already in the memory, an image, a sound, a fragment of a picture, free
text, or memory-trace neurons) becomes a vector of one embedding space through the stage
that owns that space; :func:`memory.search.search` then finds its nearest moments.

A space is searched in its active version (:func:`memory.active_version`: the newest one
that covers the whole memory, see ``sleep.py memory versions``), and the example is
embedded with the checkpoint that wrote that version, so that both sides come from the
same network.
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from api.args import Day, Root, config_of, date_of, memory_of
from core.config import SleepConfig
from core.device import resolve_device
from core.errors import ConfigError, UsageError
from core.paths import Paths
from memory import Hit

if TYPE_CHECKING:
    from stages.recall import PlannedSearch

SPACES = ("vision", "audio", "shared", "sae", "openclip", "openclip_frame")
MODALITIES = ("vision", "audio")
# (space, model_version, vector, clip ids left out of the results, further searches of the same
# query: :class:`stages.recall.PlannedSearch`, each with the days it leaves to the first)
Query = tuple[str, str | None, np.ndarray, tuple[int, ...], tuple["PlannedSearch", ...]]
# Memory-trace neurons: a stable id, a name given with ``sleep.py neuron name``, or a list of them.
Neurons = int | str | Sequence[int | str]


def query(
    root: Root,
    *,
    image: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    clip: int | None = None,
    fragment: str | os.PathLike | None = None,
    neuron: Neurons | None = None,
    text: str | None = None,
    positive: Neurons | None = None,
    negative: Neurons | None = None,
    topk: int = 10,
    date_from: Day | None = None,
    date_to: Day | None = None,
    space: str | None = None,
    modality: str | None = None,
    source: str | None = None,
    model_version: str | None = None,
    config: SleepConfig | str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> list[Hit]:
    """The moments most like one example, best first.

    Give exactly one of ``image``, ``audio``, ``clip``, ``fragment``, ``neuron`` (or
    ``positive``), ``text``.

    Args:
        root: the folder holding ``memory/`` and ``checkpoints/`` (or its :class:`Paths`).
        image: an image file, embedded by the vision model of the version searched.
        audio: a file FFmpeg reads with a sound track, embedded by the audio model of the
            version searched.
        clip: the id of a clip in the memory; its own stored vector is the query and the
            clip itself is left out of the results.
        fragment: an image of part of a moment, completed into a whole clip by the
            reconstructor and searched in the space ``vision``.
        neuron: one memory-trace neuron of the sparse autoencoder, or several, each its
            stable id (``sleep.py neuron list``) or the name given to it: the moments whose
            trace these neurons carry the largest share of (space ``sae``); moments where
            none of them fires are no match.
        positive: the same as ``neuron`` (the name the composite form reads best with).
        negative: neurons whose share is subtracted: moments rank by the sum of the positive
            neurons' activations minus the negative ones' (activations as stored: each
            moment's code has unit length, so a neuron's value is its share of the trace).
        text: free text, embedded by the OpenCLIP weights of ``models.openclip.weights``.
        topk: how many hits, at least 1.
        date_from: first day searched, a ``datetime.date`` or ``"YYYY-MM-DD"``.
        date_to: last day searched, likewise.
        space: the embedding space, one of :data:`SPACES`; by default ``vision`` for a clip
            (the first space holding vectors when there is no vision), image or fragment,
            ``audio`` for a sound, ``sae`` for neurons, ``openclip`` for text.
        modality: only hits from this sense (``"vision"`` or ``"audio"``).
        source: only clips whose recording's path contains this text.
        model_version: search this model version; ``None`` takes the space's active one.
        config: a :class:`SleepConfig`, or a YAML file (``None``: the default config).
        overrides: ``key.path=value`` strings applied to the config file.
    Returns:
        up to ``topk`` :class:`Hit`, best first (``hit.as_dict()`` is one ``--json`` entry).
        An image's hits in ``vision`` are the vector search's best
        ``memory.search.layout_rerank``, scored again by layout (:mod:`stages.layout`): their
        ``score`` is the mean cosine of the picture's regions to the hit's keyframe's.
    Raises:
        UsageError: a bad argument, no memory yet, or no trained model for the example.
        ConfigError: the config file is invalid.
    """
    if neuron is not None and positive is not None:
        raise UsageError("query: give neuron or positive, not both (they are the same)")
    neuron = positive if neuron is None else neuron
    if negative is not None and neuron is None:
        raise UsageError("--not: name at least one --neuron to rank by first")
    examples = {"image": image, "audio": audio, "clip": clip, "fragment": fragment,
                "neuron": neuron, "text": text}
    given = [name for name, value in examples.items() if value is not None]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise UsageError(f"query: give exactly one of {', '.join(examples)}{got}")
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral):
        raise UsageError(f"--topk {topk!r}: expected a whole number")
    if topk < 1:
        raise UsageError(f"--topk {topk}: must be at least 1")
    if space is not None and space not in SPACES:
        raise UsageError(f"--space {space}: expected one of {', '.join(SPACES)}")
    if modality is not None and modality not in MODALITIES:
        raise UsageError(f"--modality {modality}: expected one of {', '.join(MODALITIES)}")
    first = date_of(date_from, "--from").isoformat() if date_from is not None else None
    last = date_of(date_to, "--to").isoformat() if date_to is not None else None
    cfg = config_of(config, overrides)
    paths = memory_of(root)

    from memory import open_database, record_use
    from stages.layout import layout_ranker, reranks
    from stages.recall import PlannedSearch, search_planned
    from stages.vision import read_image

    engine = open_database(paths.database)
    try:
        fires_any: tuple[int, ...] = ()
        if given[0] == "neuron":
            space, version, vector, fires_any = _neuron_vector(neuron, negative, space, model_version, engine)
            exclude, reaches = (), ()
        else:
            space, version, vector, exclude, reaches = _query_vector(
                given[0], examples[given[0]], space, model_version, cfg, paths, engine)
        # An image's best hits are scored again by layout (stages.layout): fetch that many.
        by_layout = reranks(cfg, space) if given[0] == "image" else 0
        try:
            hits = search_planned(engine, paths, space, [PlannedSearch(version, vector), *reaches],
                                  topk=max(int(topk), by_layout), date_from=first, date_to=last, modality=modality,
                                  source=source, exclude_clip_ids=exclude, fires_any=fires_any,
                                  options=cfg.memory.search)
        except ValueError as exc:
            raise UsageError(f"query: {exc}") from None
        if by_layout and hits:
            ranker = layout_ranker(engine, paths, cfg, resolve_device(cfg.runtime.device))
            if ranker is not None:
                hits = ranker.rerank(read_image(Path(image)), hits)
        hits = hits[:int(topk)]
        record_use(engine, {h.date for h in hits})  # the order re-embedding takes (memory.uses)
        hits = _with_episodes(engine, hits)
    finally:
        engine.dispose()
    return hits


def _with_episodes(engine, hits: list[Hit]) -> list[Hit]:
    """Each hit with the episode of the day it belongs to (``None`` before the episodes stage ran)."""
    from dataclasses import replace

    from memory import episode_of

    episodes = episode_of(engine, [h.clip_id for h in hits])
    return [replace(h, episode=episodes.get(h.clip_id)) for h in hits]


def _query_vector(kind: str, example, space: str | None, model_version: str | None,
                  cfg: SleepConfig, paths: Paths, engine) -> Query:
    """The example as ``(space, model_version, vector, exclude_clip_ids)``."""
    if kind == "clip":
        return _clip_vector(example, space, model_version, paths, engine)
    if kind == "text":
        return _text_vector(example, space, cfg, engine)
    if not isinstance(example, (str, os.PathLike)):
        raise UsageError(f"--{kind} {example!r}: expected a file path")
    path = Path(example)
    if not path.is_file():
        raise UsageError(f"--{kind} {path}: no such file")
    if kind == "fragment":
        return _fragment_vector(path, space, model_version, cfg, paths, engine)
    return _file_vector("vision" if kind == "image" else "audio", path, space, model_version, cfg, paths,
                        engine)


def _encode(flag: str, encode, *args):
    try:
        return encode(*args)
    except FileNotFoundError as exc:
        raise UsageError(f"{flag}: no trained model yet ({exc}); run a night first") from None


def _clip_vector(clip_id, space: str | None, model_version: str | None, paths: Paths,
                 engine) -> Query:
    from memory import active_version, clip_vector, spaces

    if isinstance(clip_id, bool) or not isinstance(clip_id, numbers.Integral):
        raise UsageError(f"--clip {clip_id!r}: expected a clip id (a whole number)")
    have = spaces(engine)
    if not have:
        raise UsageError(f"{paths.database}: no embeddings in the memory yet")
    space = space or have[0]  # vision first when it exists
    found = clip_vector(engine, paths, space, int(clip_id), model_version or active_version(engine, space))
    if found is None and model_version is None:
        # Not in the active version (a day not re-embedded yet, e.g. tonight's): the newest
        # version that holds the clip, searched as a whole.
        found = clip_vector(engine, paths, space, int(clip_id), None)
    if found is None:
        raise UsageError(f"--clip {clip_id}: no {space} vector for that clip")
    return space, found[0], found[1], (int(clip_id),), ()


def _file_vector(modality: str, path: Path, space: str | None, model_version: str | None,
                 cfg: SleepConfig, paths: Paths, engine) -> Query:
    """An image (space ``vision``) or a sound (``audio``), or either in the space ``shared``,
    embedded with the checkpoints of the version searched (:func:`stages.recall.search_plan`:
    the active version, or while re-embedding is unfinished the newest one for its days and
    the active one through a map for the rest)."""
    from stages.align import to_shared
    from stages.audio import encode_audio_file
    from stages.common import model_of, model_version as version_name
    from stages.recall import search_plan
    from stages.vision import encode_image_file

    flag = "--image" if modality == "vision" else "--audio"
    space = space or modality
    if space not in (modality, "shared"):
        raise UsageError(f"--space {space}: an {flag[2:]} query searches {modality} or shared")
    device = resolve_device(cfg.runtime.device)
    encode_file = encode_image_file if modality == "vision" else encode_audio_file

    def encode(searched: str | None):
        if space != "shared":
            return _encode(flag, encode_file, path, cfg, paths, device, searched)
        # The heads of align@D were trained on jepa@D and cpc@D (the align stage reads the
        # vectors its night's vision and audio stages wrote).
        sense = version_name(model_of(modality), searched.partition("@")[2]) if searched else None
        _, vector = _encode(flag, encode_file, path, cfg, paths, device, sense)
        return _encode("--space shared", to_shared, vector, modality, cfg, paths, device, searched)

    first, *reaches = search_plan(engine, paths, space, encode, model_version)
    return space, first.version, first.vector, (), tuple(reaches)


def _fragment_vector(path: Path, space: str | None, model_version: str | None,
                     cfg: SleepConfig, paths: Paths, engine) -> Query:
    from stages.reconstruct import encode_fragment_file

    # Known limit: the reconstructor completes a fragment into the vision version it was
    # trained against (its own checkpoint's), which may not be the active one; that version
    # is searched, and it may hold only the days re-embedded into it so far.
    if (space or "vision") != "vision":
        raise UsageError(f"--space {space}: a fragment is completed into the space vision")
    version, vector = _encode("--fragment", encode_fragment_file, path, cfg, paths, engine,
                              resolve_device(cfg.runtime.device))
    return "vision", model_version or version, vector, (), ()


def _text_vector(text, space: str | None, cfg: SleepConfig, engine) -> Query:
    """The text's OpenCLIP embedding, to search the clips embedded with the same weights."""
    from memory import space_dim
    from stages.openclip import load_text_encoder

    if (space or "openclip") not in ("openclip", "openclip_frame"):
        raise UsageError(f"--space {space}: text is searched in the space openclip (or openclip_frame)")
    if not isinstance(text, str):
        raise UsageError(f"--text {text!r}: expected a string")
    if not text.strip():
        raise UsageError("--text: empty")
    try:
        clip = load_text_encoder(cfg.models.openclip, resolve_device(cfg.runtime.device))
    except ConfigError as exc:
        raise UsageError(f"--text: {exc}") from None
    space = space or "openclip"
    if space_dim(engine, space, clip.version) is None:
        raise UsageError(f"--text: no frames embedded with these weights ({clip.version}) yet; run a night "
                         f"with models.openclip.weights set")
    return space, clip.version, clip.embed_text(text), (), ()


def neuron_list(neuron: Neurons, flag: str = "--neuron") -> list[int | str]:
    """Neurons as a list of ids and names; a :class:`UsageError` for anything else.

    Accepts an id, a name, a comma-separated string of them (``"kitchen,40"``), or a list of
    any of those.
    """
    def whole(n) -> bool:
        return isinstance(n, numbers.Integral) and not isinstance(n, bool)

    items = [neuron] if whole(neuron) or isinstance(neuron, str) else neuron
    if isinstance(items, bytes) or not isinstance(items, Sequence):
        raise UsageError(f"{flag} {neuron!r}: expected neuron ids or names")
    out: list[int | str] = []
    for item in items:
        if whole(item):
            if item < 0:
                raise UsageError(f"{flag} {item}: neuron ids are 0 or more")
            out.append(int(item))
        elif isinstance(item, str):
            for part in (p.strip() for p in item.split(",")):
                if not part:
                    raise UsageError(f"{flag} {item!r}: an empty neuron name")
                out.append(int(part) if part.isdigit() else part)
        else:
            raise UsageError(f"{flag} {item!r}: expected a neuron id or name")
    if not out:
        raise UsageError(f"{flag}: name at least one neuron")
    return out


def _neuron_vector(positive: Neurons, negative: Neurons | None, space: str | None, model_version: str | None,
                   engine) -> tuple[str, str, np.ndarray, tuple[int, ...]]:
    """``(space, version, vector, latents that must fire)``: +1 on each positive neuron's latent,
    -1 on each negative one's, in the ``sae`` version searched."""
    from memory import NeuronError, active_version, resolve_neurons, space_dim

    wanted, unwanted = neuron_list(positive), neuron_list(negative, "--not") if negative is not None else []
    if (space or "sae") != "sae":
        raise UsageError(f"--space {space}: neurons live in the space sae")
    version = model_version or active_version(engine, "sae")
    dim = space_dim(engine, "sae", version) if version else None
    if dim is None:
        raise UsageError("--neuron: no memory traces yet (the sae stage has not run)")
    try:
        plus = resolve_neurons(engine, version, dim, wanted)
        minus = resolve_neurons(engine, version, dim, unwanted)
    except NeuronError as exc:
        raise UsageError(f"--neuron: {exc}") from None
    both = {latent for _, latent in plus} & {latent for _, latent in minus}
    if both:
        given = next(g for g, latent in plus if latent in both)
        raise UsageError(f"neuron {given} is both wanted (--neuron) and not (--not)")
    vector = np.zeros(dim, np.float32)
    for _, latent in plus:
        vector[latent] = 1.0
    for _, latent in minus:
        vector[latent] = -1.0
    return "sae", version, vector, tuple(sorted({latent for _, latent in plus}))
