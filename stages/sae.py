"""Stage ``sae``: a sparse dictionary of the night's moments, one neuron per memory trace.

Reads tonight's vectors of ``models.sae.input_space`` (by default ``shared``: every clip's
vision and audio rows in the aligned space), trains the TopK autoencoder on the clips
outside the held-out set (continuing last night's dictionary when its shape still fits),
measures it on the held-out clips, and writes every row's neuron activations to the space
``sae`` as ``sae@{date}``. Search there with a neuron's one-hot vector (``query --neuron``)
ranks moments by the share of their trace that neuron carries. Rows whose code is all zero
(no neuron fired) are left out and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from models.checkpoint import load_checkpoint, previous_checkpoint
from models.sae.identity import decoder_directions, match_latents
from models.sae.train import encode, evaluate, train_sae
from models.together import together
from stages import Night, writer_of
from stages.common import (
    heldout_mask,
    model_of,
    model_version,
    night_seed,
    resume_state,
    save_night_checkpoint,
    tonight_version,
    train_and_measure,
)

log = logging.getLogger(__name__)

MODEL = model_of("sae")
SPACE = "sae"


def strongest_neurons(activations: np.ndarray, clip_ids: np.ndarray, count: int, moments: int) -> list[dict]:
    """The neurons that are the strongest one for the most clips, each with its top moments.

    Args:
        activations: ``(N, latents)`` raw (unnormalised) activations.
        clip_ids: ``(N,)`` the clip of each row (a clip may have a row per sense).
        count: neurons to return.
        moments: distinct clips per neuron, highest activation first.
    Returns:
        ``[{"neuron", "clips_led", "rows_fired", "top": [{"clip_id", "activation"}]}]``.
    """
    if count == 0 or len(activations) == 0:
        return []
    live = activations.max(axis=1) > 0
    leader = activations.argmax(axis=1)
    led = {n: len(set(clip_ids[live & (leader == n)].tolist())) for n in np.unique(leader[live]).tolist()}
    ranked = sorted(led, key=lambda n: (-led[n], n))[:count]
    out = []
    for n in ranked:
        column = activations[:, n]
        top, seen = [], set()
        for row in np.argsort(-column, kind="stable"):
            if column[row] <= 0 or len(top) == moments:
                break
            clip = int(clip_ids[row])
            if clip not in seen:
                seen.add(clip)
                top.append({"clip_id": clip, "activation": round(float(column[row]), 4)})
        out.append({"neuron": int(n), "clips_led": int(led[n]), "rows_fired": int((column > 0).sum()),
                    "top": top})
    return out


@dataclass(frozen=True)
class Identities:
    report: dict  # :meth:`memory.neurons.IdentityReport.as_dict`, plus the threshold and any note
    latent_ids: dict[int, int]  # tonight's latent -> stable neuron id


def _identities(night: Night, version: str, model, resumed: dict | None) -> Identities:
    """Match tonight's neurons to the previous night's by decoder cosine and record their ids.

    The previous night is the newest earlier checkpoint (the one tonight continues, or the one
    it could not continue because the shape changed: its directions still live in the same
    input width when only the number of latents changed).
    """
    from memory import assign_identities

    threshold = night.cfg.models.sae.match_threshold
    new = decoder_directions(model.state_dict())
    previous = previous_checkpoint(night.paths.checkpoints / MODEL, night.date)
    matches, previous_version, previous_latents, note = [], None, 0, None
    if previous is not None:
        checkpoint = resumed if resumed is not None else load_checkpoint(previous, ("model",))
        previous_version = checkpoint.get("model_version") or model_version(MODEL, previous.stem)
        old = decoder_directions(checkpoint["model"])
        previous_latents = len(old)
        try:
            matches = match_latents(new, old, threshold)
        except ValueError as exc:
            note = f"no neuron kept its identity: {exc}"
    report = assign_identities(night.engine, version, len(new), matches, previous_version, previous_latents)
    summary = {**report.as_dict(), "threshold": threshold, **({"note": note} if note else {})}
    log.info("sae: neurons kept %d (mean match cosine %s), born %d, lost %d", summary["kept"],
             (summary["match_cosine"] or {}).get("mean"), summary["born"], summary["lost"])
    # Every latent is either kept or born: together they are tonight's latent -> id.
    ids = {n["latent"]: n["id"] for n in report.kept + report.born}
    return Identities(summary, ids)


def run(night: Night) -> dict:
    """Train tonight's dictionary and write every row's neuron activations to ``sae``.

    Returns:
        counts and versions, the neurons for the report (with a frame path per moment), and
        ``metrics``: training curve, held-out FVU, active neurons per row, neurons used.
    """
    from memory import neuron_names
    from memory.media import middle_frames
    from memory.store import EmbeddingRow, load_vectors, write_embeddings

    cfg, day, paths, device = night.cfg.models.sae, night.day, night.paths, night.device
    space = cfg.input_space
    source_version = tonight_version(night, writer_of(space).name)
    rows, vectors = load_vectors(night.engine, paths, space=space, model_version=source_version, date=day)
    result: dict = {"input_space": space, "input_version": source_version, "rows": len(rows)}
    if len(rows) < 2:
        return {**result, "trained": False, "note": f"fewer than two {space} vectors tonight"}

    clip_ids = np.array([r.clip_id for r in rows])
    seed = night_seed(night)
    heldout = heldout_mask(clip_ids, night.cfg.models.heldout_fraction, seed)
    train_rows, measured_on = train_and_measure(heldout)

    resume = resume_state(night, MODEL,
                          {"n_inputs": int(vectors.shape[1]), "latents": cfg.latents, "kind": cfg.kind},
                          ("model", "optimizer", "step", "n_inputs", "config"),
                          defaults={"kind": "topk"})  # checkpoints from before kind were all TopK
    trained = together(train_sae, vectors[train_rows], cfg, device, seed=seed, resume=resume.checkpoint)
    activations = encode(trained.model, vectors, device)
    metrics: dict = {
        **evaluate(trained.model, vectors[measured_on], activations, device,
                   rows_label=f"tonight's {len(rows)} rows, training and held-out"),
        "measured_on": "held-out clips" if measured_on is heldout else "training clips (too few held out)",
        "train_mse_curve": [round(h["mse"], 5) for h in trained.history],
        "train_dead_curve": [round(h["dead"], 4) for h in trained.history],
        "train_seconds": round(trained.seconds, 2),
        "kind": cfg.kind, "latents": cfg.latents, "k": cfg.k,
    }

    version = model_version(MODEL, day)
    save_night_checkpoint(night, MODEL, {
        "model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(),
        "step": trained.step, "config": cfg.model_dump(), "n_inputs": int(vectors.shape[1]),
        "input_space": space, "input_version": source_version})

    fired = activations.max(axis=1) > 0
    kept = [r for r, f in zip(rows, fired) if f]
    write_embeddings(night.engine, paths, space=SPACE, model_version=version, date=day,
                     rows=[EmbeddingRow(r.clip_id, r.modality, r.frame_id) for r in kept],
                     vectors=activations[fired])
    identities = _identities(night, version, trained.model, resume.checkpoint)
    neurons = strongest_neurons(activations, clip_ids, cfg.report_neurons, cfg.report_moments)
    named = neuron_names(night.engine)
    for neuron in neurons:  # the report and the CLI speak of stable ids, not latent indices
        neuron["latent"] = neuron["neuron"]
        neuron["neuron"] = identities.latent_ids.get(neuron["latent"], neuron["latent"])
        neuron["name"] = named.get(neuron["neuron"])
    with night.Session() as session:
        thumbnails = middle_frames(session, {m["clip_id"] for n in neurons for m in n["top"]})
    for neuron in neurons:
        for moment in neuron["top"]:
            moment["frame_path"] = thumbnails.get(moment["clip_id"])
    log.info("sae: wrote %d of %d rows to space %r as %s (%d silent); held-out FVU %s, %d neurons used",
             len(kept), len(rows), SPACE, version, int((~fired).sum()), metrics["fvu"], metrics["neurons_used"])
    return {**result, "trained": True, "model_version": version, "written": len(kept),
            "silent_rows": int((~fired).sum()), **resume.as_result(), "steps": trained.steps,
            "neurons": neurons, "identities": identities.report, "metrics": metrics}
