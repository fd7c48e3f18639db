"""The journal: parsing, the text memory (MiniLM, space ``text``), its sparse autoencoder
(``text_sae``), ``query --journal`` with the clips around each entry, ``journal add``,
``forget`` and ``doctor``.

MiniLM is loaded once per process (``models.text.minilm`` caches it): the planted-journal
tests and the night share one load.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest
from conftest import make_media, run_cli

from api import doctor, forget, journal_add, journal_query
from core.errors import UsageError
from core.paths import Paths
from ingest.journal import format_line, parse_journal, parse_line
from memory.db import make_sessionmaker, open_database
from memory.journal import all_entries, day_entries, load_entry_vectors, versions
from pipeline.runner import run_night
from stages import Night

DAY = dt.date(2026, 1, 15)

# Four topics, ten entries each, worded differently so that a query must match meaning.
TOPICS = {
    "sister": [
        "coffee with my sister Ana at the corner cafe", "Ana and I shared a pot of tea and cake",
        "met my sister for an espresso before work", "long chat with Ana over cappuccinos",
        "my sister told me about her new flat over coffee", "flat white with Ana, she is moving to Lyon",
        "called into the cafe with my sister after lunch", "Ana bought the lattes today, we laughed a lot",
        "breakfast and coffee with my little sister", "sat in the coffee shop with Ana for an hour",
    ],
    "running": [
        "ran ten kilometres along the river", "morning jog in the park, legs felt heavy",
        "interval training on the track: 6 x 800 m", "slow recovery run after yesterday's race",
        "half-marathon training, 18 km long run", "ran up the hill twice, new personal best",
        "easy 5 km run before breakfast", "running club session, tempo pace",
        "trail run through the woods in the rain", "stretched and foam-rolled after my run",
    ],
    "bug": [
        "spent the morning debugging a memory leak in the server", "fixed the failing unit tests in the parser",
        "code review of the database migration", "tracked down a race condition in the scheduler",
        "refactored the login module and wrote tests", "the deploy broke production; rolled back the release",
        "pair programming on the API bug with Tom", "profiled the slow SQL query and added an index",
        "wrote a patch for the null pointer crash", "merged the pull request after CI passed",
    ],
    "piano": [
        "practised Chopin's nocturne on the piano", "an hour of scales and arpeggios at the keyboard",
        "piano lesson: worked on the left hand of the Bach invention", "played through the Satie gymnopedie",
        "learnt a new jazz chord voicing on the piano", "sight-reading practice, slow and steady",
        "tuned the old upright piano in the hall", "recorded myself playing the Debussy prelude",
        "my piano teacher said my pedalling improved", "practised the sonata's tricky passage with a metronome",
    ],
}
QUERIES = {"sister": "coffee with my sister", "running": "going for a run",
           "bug": "fixing a software bug", "piano": "practising music on the piano"}


def _night(root, cfg, date=DAY) -> Night:
    paths = Paths.at(root)
    engine = open_database(paths.database)
    return Night(date, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))


# --- parsing ---------------------------------------------------------------------------------

def test_malformed_lines_are_noted_by_number_and_the_rest_kept(tmp_path):
    path = tmp_path / "journal.md"
    path.write_bytes(b"# Thursday\n\n- 08:15 coffee with Ana\n25:99 lunch somewhere\n"
                     b"\xff\xfe\x00binary\n" + b"x" * (1 << 20) + b"\n"
                     b"12:30 - walked home\nno time here\n\x00\x01\x02 oops\n")
    entries, notes = parse_journal(path, max_line_chars=4000)
    assert [(e.line, e.at_text, e.text) for e in entries] == [
        (3, "08:15", "coffee with Ana"), (4, None, "25:99 lunch somewhere"),
        (7, "12:30", "walked home"), (8, None, "no time here")]
    assert notes == [
        "journal.md line 4: '25:99' is not a time (HH:MM); kept as text without a time",
        "journal.md line 5: not UTF-8 text, skipped",
        "journal.md line 6: 1048576 characters, longer than journal.max_line_chars (4000), skipped",
        "journal.md line 9: binary bytes (control characters), skipped",
    ]


def test_a_line_written_by_journal_add_reads_back_the_same():
    for text, at in (("coffee with Ana", dt.time(8, 5)), ("# not a heading", None), ("- a dash", None),
                     ("two\nlines", None)):
        entry, note = parse_line(format_line(text, at), 1)
        assert note is None
        assert (entry.at, entry.text) == (at, " ".join(text.split()))
    with pytest.raises(ValueError):
        format_line("   ", None)


def test_a_day_without_a_journal_is_a_note(root, tiny_cfg):
    from stages.journal import run

    Paths.at(root).raw(DAY).mkdir(parents=True)
    result = run(_night(root, tiny_cfg))
    assert result["entries"] == 0 and "no journal for 2026-01-15" in result["note"]


# --- the planted journal: retrieval and the text autoencoder ---------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A night over a journal of 40 entries in 4 topics (interleaved, timed): root, config, result."""
    from core.config import CONFIG_DIR, load_config
    from stages.journal import run

    root = tmp_path_factory.mktemp("planted")
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    lines, topic_of = ["# a planted journal"], {}
    for i in range(10):
        for t, (topic, texts) in enumerate(TOPICS.items()):
            lines.append(f"{7 + t * 3:02d}:{i * 5:02d} {texts[i]}")
            topic_of[texts[i]] = topic
    raw = Paths.at(root).raw(DAY)
    raw.mkdir(parents=True)
    (raw / "journal.md").write_text("\n".join(lines) + "\n")
    result = run(_night(root, cfg))
    return root, cfg, result, topic_of


def test_each_topic_query_returns_its_own_entries_first(planted):
    root, cfg, result, topic_of = planted
    assert result["entries"] == 40 and result["embedded"] == 40 and not result["notes"]
    recalls = {}
    for topic, words in QUERIES.items():
        hits = journal_query(root, words, topk=5, config=cfg)
        recalls[topic] = sum(topic_of[h.text] == topic for h in hits) / 5
        assert topic_of[hits[0].text] == topic, (words, [h.text for h in hits])
    print(f"\njournal R@5 per topic: {recalls}; mean {np.mean(list(recalls.values())):.2f} (chance 0.25)")
    assert min(recalls.values()) >= 0.8


def test_a_text_sae_neuron_fires_mostly_for_one_topic(planted):
    root, _, result, topic_of = planted
    sae = result["sae"]
    assert sae["trained"] and sae["model_version"] == "textsae@2026-01-15"
    engine = open_database(Paths.at(root).database)
    ids, codes = load_entry_vectors(engine, Paths.at(root), space="text_sae", model_version=sae["model_version"])
    topics = {e.id: topic_of[e.text] for e in all_entries(engine)}
    engine.dispose()
    labels = np.array([topics[int(i)] for i in ids])
    best, purities = (0.0, None, None), []
    for neuron in range(codes.shape[1]):
        fired = codes[:, neuron] > 0
        if fired.sum() < 5:  # a neuron of one or two entries is pure by accident
            continue
        names, counts = np.unique(labels[fired], return_counts=True)
        purity = counts.max() / fired.sum()
        purities.append(purity)
        if purity > best[0]:
            best = (purity, neuron, f"{names[counts.argmax()]} in {counts.max()} of {fired.sum()} entries")
    print(f"\ntext SAE: purest neuron {best[1]} ({best[2]}): purity {best[0]:.2f} against chance 0.25; "
          f"{len(purities)} neurons fire for 5+ entries, mean purity {np.mean(purities):.2f}")
    assert best[0] >= 0.6
    assert sae["neurons"] and all(m["text"] for n in sae["neurons"] for m in n["top"])


# --- a night with footage: query --journal, journal add, rerun, doctor, forget ---------------

@pytest.fixture(scope="module")
def night_root(tmp_path_factory):
    from core.config import CONFIG_DIR, load_config

    root = tmp_path_factory.mktemp("night")
    raw = Paths.at(root).raw(DAY)
    make_media(raw / "cafe.mp4", seconds=4, extra=["-metadata", "creation_time=2026-01-15T08:15:00"])
    (raw / "journal.md").write_text("# Thursday\n08:16 coffee with my sister Ana\n17:40 ran along the river <fast>\n"
                                    "26:00 a bad time\n")
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    outcome = run_night(DAY, cfg, Paths.at(root), only=["ingest", "journal"], device="cpu")
    assert outcome.states["journal"] == "done", outcome.errors
    return root, cfg


def test_query_journal_returns_the_entry_and_the_clip_in_its_window(night_root):
    root, _ = night_root
    done = run_cli("query", "--journal", "having coffee with my sister", "--topk", "1", "--json",
                   "--config", "configs/tiny.yaml", "--root", str(root))
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [(h["date"], h["at"], h["text"]) for h in hits] == [("2026-01-15", "08:16", "coffee with my sister Ana")]
    clips = hits[0]["clips"]
    assert clips and all(c["source_path"].endswith("cafe.mp4") for c in clips)
    assert clips[0]["wall_start"].startswith("2026-01-15T08:15")


def test_an_entry_far_from_any_recording_has_no_clips(night_root):
    root, cfg = night_root
    hit = journal_query(root, "running by the river", topk=1, config=cfg)[0]
    assert (hit.at, hit.clips) == ("17:40", [])


def test_the_bad_time_is_noted_in_the_summary_and_the_report(night_root):
    root, _ = night_root
    summary = json.loads((Paths.at(root).report(DAY) / "summary.json").read_text())
    note = "journal.md line 4: '26:00' is not a time (HH:MM); kept as text without a time"
    assert summary["journal"]["notes"] == [note]
    assert "journal.md" not in json.dumps(summary["ingest"].get("ignored", []))
    page = (Paths.at(root).report(DAY) / "index.html").read_text()
    assert "line 4: &#x27;26:00&#x27; is not a time" in page
    assert "ran along the river &lt;fast&gt;" in page and "<fast>" not in page


def test_journal_add_is_searchable_at_once_and_rerun_adds_nothing(night_root):
    root, cfg = night_root
    added = journal_add(root, "bought flowers for grandma", at="08:17", date=DAY, config=cfg)
    assert added["embedded"] and added["line"] == 5
    hit = journal_query(root, "flowers for my grandmother", topk=1, config=cfg)[0]
    assert (hit.entry_id, hit.origin, hit.at) == (added["entry_id"], "cli", "08:17") and hit.clips
    before = [(e.id, e.text) for e in day_entries(open_database(Paths.at(root).database), DAY.isoformat())]
    outcome = run_night(DAY, cfg, Paths.at(root), only=["journal"], force=True, device="cpu")
    assert outcome.states["journal"] == "done", outcome.errors
    engine = open_database(Paths.at(root).database)
    assert [(e.id, e.text) for e in day_entries(engine, DAY.isoformat())] == before
    assert len(versions(engine, "text")) == 1
    assert doctor(root)["ok"], doctor(root)


def test_journal_add_refuses_a_bad_time_and_empty_text(night_root):
    root, cfg = night_root
    with pytest.raises(UsageError, match="--at 7.30"):
        journal_add(root, "tea", at="7.30", date=DAY, config=cfg)
    with pytest.raises(UsageError, match="empty"):
        journal_add(root, "  ", date=DAY, config=cfg)


def test_a_journal_add_beside_a_doctor_is_not_taken_for_a_stray_file(night_root, monkeypatch):
    # `journal add` takes no night lock: its shard can land after the doctor read which files
    # the database names. The doctor asks again, under the lock `journal add` holds from the
    # file to its row, before it calls a shard file stray (and, repairing, deletes it).
    from memory import journal_care

    root, cfg = night_root
    named_then = journal_care.known_paths
    added = {}

    def add_meanwhile(session):
        known = named_then(session)
        if not added:
            added.update(journal_add(root, "fed the ducks by the pond", at="16:00", date=DAY, config=cfg))
        return known

    monkeypatch.setattr(journal_care, "known_paths", add_meanwhile)
    report = doctor(root, repair=True)
    assert added["embedded"]
    assert not [p for p in report["problems"] if "no database row knows" in p], report
    monkeypatch.undo()
    assert doctor(root)["ok"]
    hit = journal_query(root, "feeding ducks at the pond", topk=1, config=cfg)[0]
    assert hit.entry_id == added["entry_id"]


def test_doctor_names_vectors_without_entries_and_entries_without_vectors(night_root):
    from sqlalchemy import delete
    from sqlalchemy.orm import Session

    from memory import NewEntry, sync_day
    from memory.journal import JournalEntry

    root, _ = night_root
    engine = open_database(Paths.at(root).database)
    river = next(e for e in day_entries(engine, DAY.isoformat()) if e.at == "17:40")
    with Session(engine) as session, session.begin():
        session.execute(delete(JournalEntry).where(JournalEntry.id == river.id))
    sync_day(engine, DAY.isoformat(), [NewEntry(None, "09:00", "never embedded", "cli")], prune_before=None)
    found = doctor(root)
    assert any("vectors whose journal entries are gone" in p for p in found["problems"]), found
    assert any("2026-01-15: 1 entries have no text vector" in p for p in found["problems"]), found
    repaired = doctor(root, repair=True)
    assert any("rewrote the shard without them" in r for r in repaired["repaired"]), repaired
    assert [p for p in doctor(root)["problems"] if "gone" in p] == []


def test_forget_removes_the_days_entries_and_vectors(night_root):
    root, _ = night_root
    paths = Paths.at(root)
    done = run_cli("forget", "--date", DAY.isoformat(), "--yes", "--json", "--root", str(root))
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    # journal.md's 3 and journal add's 2 (the doctor test swapped one for an unembedded one)
    assert plan["database"]["journal_entries"] == 5 and plan["database"]["journal_vectors"] > 0
    engine = open_database(paths.database)
    assert all_entries(engine) == []
    assert not list(paths.embeddings.glob(f"text*/*/{DAY.isoformat()}-*.npy"))
    assert forget(root, DAY)["database"]["journal_entries"] == 0


def test_query_journal_works_on_the_demo_day(tmp_path):
    from core.config import CONFIG_DIR, load_config
    from pipeline.demo import make_sample_day

    root = tmp_path / "demo"
    make_sample_day(root, DAY)
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    outcome = run_night(DAY, cfg, Paths.at(root), only=["ingest", "journal"], device="cpu")
    assert outcome.states["journal"] == "done", outcome.errors
    hit = journal_query(root, "cycling in town", topk=1, config=cfg)[0]
    assert hit.at == "12:31" and hit.clips
    assert {c["source_path"].rsplit("/", 1)[-1] for c in hit.clips} == {"VID_20260115_123040.mp4"}
