"""Note events from music21's bundled corpus: works, extraction, de-duplication and a compact cache.

A `Work` is one composition (one ABC tune of an opus file, one chorale, one mass movement ...) as
note events per part, in quarter-note beats and in seconds at the score's tempo (or a default
tempo derived from the meter), with section boundaries (groups of bars, about 6 s each) that the
version sampler uses to drop, repeat and reorder sections.

Extraction is slow (music21 parses each piece: 20-150 ms for a folk tune or a chorale, seconds
for a symphonic movement), so it runs in a process pool and its result is cached with
`save_note_corpus` / `load_note_corpus` (one ``.npz`` with ``allow_pickle=False`` that holds the
event columns and a JSON index).

The same melody is often in the corpus several times (one chorale tune harmonised in several
cantatas, one reel in both O'Neill's and Ryan's collections, Essen's variant files).
`extract_works` drops such near-duplicates by comparing transposition- and rhythm-free interval
shingles of the melodies, so no melody lands in both a training and a test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# One note event. Beats are quarter notes (music21's quarterLength); seconds follow the work's tempo map.
NOTE_DTYPE = np.dtype(
    [
        ("onset_beats", "<f8"),
        ("duration_beats", "<f8"),
        ("onset_s", "<f8"),
        ("duration_s", "<f8"),
        ("pitch", "<i2"),  # MIDI note number
        ("velocity", "u1"),  # MIDI velocity 1..127
    ]
)

# Collections of the bundled corpus, in de-duplication priority order: when two works share a
# melody the one from the earlier collection is kept (harmonised settings before bare tunes).
DEFAULT_SOURCES: tuple[str, ...] = (
    "bach",
    "palestrina",
    "monteverdi",
    "trecento",
    "josquin",
    "beethoven",
    "mozart",
    "haydn",
    "schumann_robert",
    "schumann_clara",
    "schubert",
    "chopin",
    "handel",
    "corelli",
    "cpebach",
    "verdi",
    "weber",
    "joplin",
    "beach",
    "johnson_j_r",
    "liliuokalani",
    "luca",
    "lusitano",
    "ciconia",
    "schoenberg",
    "webern",
    "leadSheet",
    "essenFolksong",
    "oneills1850",
    "ryansMammoth",
    "airdsAirs",
    "miscFolk",
    "nottingham-dataset",
)
# Formats music21 parses into scores. Roman-numeral analyses (.rntxt) restate pieces already in
# the corpus, so they are not works of their own.
SCORE_SUFFIXES = (".abc", ".mxl", ".xml", ".musicxml", ".krn", ".mid", ".midi")

DEFAULT_VELOCITY = 80
DYNAMIC_VELOCITY = {
    "pppp": 20,
    "ppp": 30,
    "pp": 42,
    "p": 55,
    "mp": 68,
    "mf": 80,
    "f": 95,
    "ff": 108,
    "fff": 118,
    "ffff": 125,
    "sf": 105,
    "sfz": 108,
    "fp": 95,
}
# Without a metronome mark: the meter's beat (dotted quarter in 6/8, half in 2/2) at this rate.
DEFAULT_BEAT_BPM = 90.0
DEFAULT_QUARTER_BPM = 100.0
# ... unless that puts the melody's median inter-onset interval outside this range.
MIN_TYPICAL_IOI_S, MAX_TYPICAL_IOI_S = 0.15, 0.6
MIN_QUARTER_BPM, MAX_QUARTER_BPM = 20.0, 400.0  # metronome marks are clipped to this
MAX_REPEAT_EXPANSION = 4.0  # an expanded score longer than this × the written one is a parse error
TARGET_SECTION_S = 6.0  # sections are groups of 1, 2, 4, 8 or 16 bars closest to this length
MIN_DURATION_S = 8.0
MIN_NOTES = 16

# De-duplication: shingles of this many consecutive melodic intervals (repeated notes collapsed),
# two melodies are the same work when this share of the smaller shingle set is in the larger.
SHINGLE_LENGTH = 6
DUPLICATE_CONTAINMENT = 0.6
# Shingles shared by more works than this are scale/arpeggio commonplaces: not evidence.
SHINGLE_MAX_POSTINGS = 64
# Works sharing this share of shingles are compared note by note: the same melody when the
# shorter interval sequence is within this many edits per interval of a stretch of the longer.
CANDIDATE_SHARE = 0.2
DUPLICATE_EDIT_SHARE = 0.25
MIN_EDIT_COMPARE = 16  # intervals: shorter melodies only match by shingles
MIN_SHARED_SHINGLES = 6
# The shorter melody must have this share of the longer one's intervals (a tune written out
# twice still matches; a 12-note tune inside a 300-note mass movement does not).
MIN_LENGTH_RATIO = 0.4

_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)
CHECKPOINT_ITEMS = 250  # items per extraction checkpoint file
CACHE_FORMAT = "csi-note-corpus"
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """One part (voice/instrument) of a work.

    name: the score's part name ("" when none); program: the score's General-MIDI program 0..127,
    -1 when the score names none; events: NOTE_DTYPE [n], sorted by onset then pitch.
    """

    name: str
    program: int
    events: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Work:
    """One composition as note events.

    work_id: stable id "m21:<corpus path>[#<ABC tune number>]"; source: the corpus collection.
    tempo_map: float64 [K, 2] rows (start beat, quarter notes per minute), first row at beat 0;
    tempo_bpm: the quarter-note tempo at the start; tempo_from_score: False when it is a default.
    sections_beats: float64 [S + 1] section boundaries in beats, from 0 to the end of the last note.
    meter: (numerator, denominator) of the first time signature, (0, 0) when the score has none;
    beat_beats: the meter's beat in quarter notes (1.5 in 6/8).
    """

    work_id: str
    title: str
    source: str
    composer: str
    parts: tuple[Part, ...]
    tempo_map: np.ndarray
    tempo_from_score: bool
    sections_beats: np.ndarray
    meter: tuple[int, int]
    beat_beats: float

    @property
    def tempo_bpm(self) -> float:
        return float(self.tempo_map[0, 1])

    @property
    def n_notes(self) -> int:
        return sum(len(p.events) for p in self.parts)

    @property
    def duration_beats(self) -> float:
        return float(self.sections_beats[-1])

    @property
    def duration_s(self) -> float:
        return float(beats_to_seconds(np.array([self.duration_beats]), self.tempo_map)[0])

    @property
    def sections_s(self) -> np.ndarray:
        """Section boundaries in seconds, float64 [S + 1]."""
        return beats_to_seconds(self.sections_beats, self.tempo_map)

    @property
    def n_sections(self) -> int:
        return len(self.sections_beats) - 1

    def all_events(self) -> np.ndarray:
        """Every part's events in one NOTE_DTYPE array sorted by onset."""
        events = np.concatenate([p.events for p in self.parts]) if self.parts else np.zeros(0, NOTE_DTYPE)
        return events[np.argsort(events["onset_beats"], kind="stable")]

    def melody(self) -> np.ndarray:
        """The melody as a skyline: the highest note of the first part at each onset, NOTE_DTYPE [m]."""
        return skyline(self.parts[0].events) if self.parts else np.zeros(0, NOTE_DTYPE)


def beats_to_seconds(beats: np.ndarray, tempo_map: np.ndarray) -> np.ndarray:
    """Positions in quarter-note beats → seconds under a piecewise-constant tempo map [K, 2]."""
    beats = np.asarray(beats, dtype=np.float64)
    starts = tempo_map[:, 0]
    seconds_per_beat = 60.0 / tempo_map[:, 1]
    start_s = np.concatenate([[0.0], np.cumsum(np.diff(starts) * seconds_per_beat[:-1])])
    seg = np.clip(np.searchsorted(starts, beats, side="right") - 1, 0, len(starts) - 1)
    return start_s[seg] + (beats - starts[seg]) * seconds_per_beat[seg]


def skyline(events: np.ndarray) -> np.ndarray:
    """The highest-pitched event at each distinct onset (chords → their top note)."""
    if len(events) == 0:
        return events
    order = np.lexsort((-events["pitch"], events["onset_beats"]))
    ev = events[order]
    first = np.ones(len(ev), dtype=bool)
    first[1:] = ev["onset_beats"][1:] != ev["onset_beats"][:-1]
    return ev[first]


def _with_seconds(events: np.ndarray, tempo_map: np.ndarray) -> np.ndarray:
    onset_s = beats_to_seconds(events["onset_beats"], tempo_map)
    end_s = beats_to_seconds(events["onset_beats"] + events["duration_beats"], tempo_map)
    events["onset_s"] = onset_s
    events["duration_s"] = end_s - onset_s
    return events


def make_work(
    work_id: str,
    parts: Sequence[tuple[str, int, np.ndarray]],
    tempo_bpm: float = DEFAULT_QUARTER_BPM,
    meter: tuple[int, int] = (4, 4),
    sections_beats: Sequence[float] | None = None,
    title: str = "",
    source: str = "custom",
    tempo_map: np.ndarray | None = None,
) -> Work:
    """A Work from note events in beats (for notes that do not come from music21, and for tests).

    parts: [(name, GM program or -1, events)] where events has fields onset_beats, duration_beats,
    pitch, velocity (e.g. NOTE_DTYPE); tempo_bpm: quarter notes per minute (or a tempo_map
    [K, 2]); sections_beats: boundaries from 0 to the end, default groups of bars as for scores.
    """
    tmap = np.array([[0.0, float(tempo_bpm)]]) if tempo_map is None else np.asarray(tempo_map, np.float64)
    if tmap.ndim != 2 or tmap.shape[1] != 2 or tmap[0, 0] != 0 or np.any(tmap[:, 1] <= 0):
        raise ValueError("tempo_map must be [K, 2] rows (start beat, qpm > 0) starting at beat 0")
    built = []
    for name, program, ev in parts:
        events = np.zeros(len(ev), dtype=NOTE_DTYPE)
        for field in ("onset_beats", "duration_beats", "pitch", "velocity"):
            events[field] = ev[field]
        if len(events) and (np.any(events["onset_beats"] < 0) or np.any(events["duration_beats"] <= 0)):
            raise ValueError("events need onset_beats >= 0 and duration_beats > 0")
        events = events[np.lexsort((events["pitch"], events["onset_beats"]))]
        built.append(Part(name=name, program=int(program), events=_with_seconds(events, tmap)))
    if not any(len(p.events) for p in built):
        raise ValueError("a work needs at least one note")
    end = max(
        float(np.max(p.events["onset_beats"] + p.events["duration_beats"])) for p in built if len(p.events)
    )
    num, den = meter
    bar = num * 4.0 / den if num else 0.0
    if sections_beats is None:
        downbeats = list(np.arange(0.0, end, bar)) if bar else []
        sections = _sections(downbeats, bar, end, 60.0 / float(tmap[0, 1]))
    else:
        sections = np.asarray(sections_beats, dtype=np.float64)
        if sections[0] != 0 or np.any(np.diff(sections) <= 0) or sections[-1] < end - 1e-9:
            raise ValueError("sections_beats must rise strictly from 0 to at least the end of the last note")
    beat = 1.5 if num and den == 8 and num % 3 == 0 else (4.0 / den if num else 1.0)
    return Work(
        work_id=work_id,
        title=title or work_id,
        source=source,
        composer="",
        parts=tuple(built),
        tempo_map=tmap,
        tempo_from_score=True,
        sections_beats=sections,
        meter=(int(num), int(den)),
        beat_beats=beat,
    )


# ---------------------------------------------------------------------------------------------
# Corpus enumeration


@dataclasses.dataclass(frozen=True)
class CorpusItem:
    """One parseable unit of the corpus: a score file, or one tune of an ABC opus file."""

    work_id: str
    rel_path: str  # path inside music21's corpus folder
    path: str  # absolute path
    abc_text: str | None  # the tune's ABC text (with the file header) for ABC files


def _corpus_root_and_paths() -> tuple[Path, list[Path]]:
    import music21
    from music21 import corpus

    paths = [Path(p) for p in corpus.getCorePaths()]
    root = Path(music21.__file__).parent / "corpus"  # where all core paths live
    return root, sorted(p for p in paths if p.suffix.lower() in SCORE_SUFFIXES)


def list_sources() -> dict[str, int]:
    """Collections of music21's bundled corpus → number of score files in each."""
    root, paths = _corpus_root_and_paths()
    counts: Counter[str] = Counter(p.relative_to(root).parts[0] for p in paths)
    return dict(sorted(counts.items()))


_ABC_TUNE_START = re.compile(r"(?m)^X:")


def split_abc_tunes(text: str) -> tuple[str, list[tuple[str, str]]]:
    """An ABC file → (file header, [(reference number, tune text), ...])."""
    starts = [m.start() for m in _ABC_TUNE_START.finditer(text)]
    if not starts:
        return text, []
    header = text[: starts[0]]
    tunes = []
    for i, start in enumerate(starts):
        block = text[start : starts[i + 1] if i + 1 < len(starts) else len(text)]
        number = block[2 : block.find("\n")].strip() if "\n" in block else block[2:].strip()
        tunes.append((number or str(i + 1), block))
    return header, tunes


def _header_fields(header: str) -> str:
    """The field lines (e.g. "L:1/8") of an ABC file header, which apply to every tune."""
    lines = [ln for ln in header.splitlines() if re.match(r"^[A-Za-z]:", ln) and not ln.startswith("X:")]
    return "\n".join(lines) + "\n" if lines else ""


def iter_corpus_items(sources: Sequence[str] = DEFAULT_SOURCES) -> Iterator[CorpusItem]:
    """Items of the given collections (names like "bach", or corpus-relative paths/prefixes like
    "essenFolksong/altdeu10.abc"), in the order of `sources`, files sorted within each."""
    for _, item in _iter_source_items(sources):
        yield item


def _iter_source_items(sources: Sequence[str]) -> Iterator[tuple[str, CorpusItem]]:
    """(the entry of `sources` that selected it, item) for every item; an item only once."""
    root, paths = _corpus_root_and_paths()
    rels = [(p, p.relative_to(root).as_posix()) for p in paths]
    seen: set[str] = set()
    for source in sources:
        source = source.strip("/")
        matched = [(p, r) for p, r in rels if r == source or r.startswith(source + "/")]
        if not matched:
            raise ValueError(
                f"no score in music21's corpus matches source {source!r}; "
                f"collections: {sorted(list_sources())}"
            )
        for path, rel in matched:
            if rel in seen:
                continue
            seen.add(rel)
            if path.suffix.lower() != ".abc":
                yield source, CorpusItem(f"m21:{rel}", rel, str(path), None)
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            header, tunes = split_abc_tunes(text)
            fields = _header_fields(header)
            numbers: Counter[str] = Counter()
            for number, block in tunes:
                numbers[number] += 1
                suffix = number if numbers[number] == 1 else f"{number}~{numbers[number]}"
                # header fields go after the X: line so the tune still starts with its reference number
                first_nl = block.find("\n")
                tune = block[: first_nl + 1] + fields + block[first_nl + 1 :] if fields else block
                yield source, CorpusItem(f"m21:{rel}#{suffix}", rel, str(path), tune)


# ---------------------------------------------------------------------------------------------
# Parsing one item


class SkipWork(Exception):
    """A corpus item that does not make a usable work (too short, no notes, parse error)."""


def _source_of(rel_path: str) -> str:
    return rel_path.split("/", 1)[0]


def _default_quarter_bpm(meter_beat: float | None, melody_onsets: np.ndarray) -> float:
    """A plausible tempo for a score without a metronome mark.

    The meter's beat at DEFAULT_BEAT_BPM, corrected when that makes the melody's typical
    inter-onset interval implausibly fast or slow (notation conventions differ: Essen writes
    quarter-note tunes in 4/2, Palestrina moves in halves and wholes).
    """
    qpm = DEFAULT_BEAT_BPM / meter_beat if meter_beat else DEFAULT_QUARTER_BPM
    iois = np.diff(np.unique(melody_onsets))
    if len(iois):
        median_ioi = float(np.median(iois))
        ioi_s = median_ioi * 60.0 / qpm
        clipped = float(np.clip(ioi_s, MIN_TYPICAL_IOI_S, MAX_TYPICAL_IOI_S))
        if clipped != ioi_s:
            qpm = median_ioi * 60.0 / clipped
    return qpm


def _tempo_map(score: Any, default_qpm: float) -> tuple[np.ndarray, bool]:
    from music21 import tempo

    marks: dict[float, float] = {}
    for mark in score.flatten().getElementsByClass(tempo.MetronomeMark):
        try:
            qpm = mark.getQuarterBPM()
        except Exception:  # music21 raises on marks it cannot resolve
            qpm = None
        if qpm is None or not math.isfinite(qpm) or qpm <= 0:
            continue
        marks[float(mark.getOffsetInHierarchy(score))] = float(np.clip(qpm, MIN_QUARTER_BPM, MAX_QUARTER_BPM))
    if not marks:
        return np.array([[0.0, default_qpm]]), False
    rows = sorted(marks.items())
    if rows[0][0] > 0:
        rows.insert(0, (0.0, rows[0][1]))
    kept = [rows[0]]
    for beat, qpm in rows[1:]:
        if qpm != kept[-1][1]:
            kept.append((beat, qpm))
    return np.array(kept, dtype=np.float64), True


def _part_events(part: Any) -> np.ndarray:
    """A part's sounding notes as NOTE_DTYPE (seconds not yet set); tied notes merged into one."""
    from music21 import chord, dynamics, harmony, note

    flat = part.flatten()
    dyn = sorted(
        (float(d.offset), DYNAMIC_VELOCITY[d.value])
        for d in flat.getElementsByClass(dynamics.Dynamic)
        if d.value in DYNAMIC_VELOCITY
    )
    dyn_offsets = np.array([o for o, _ in dyn])
    rows: list[list[float]] = []  # [onset, duration, midi, velocity]
    open_ties: dict[int, int] = {}  # midi → row of the note a tie continues
    for element in flat.notes:
        if isinstance(element, harmony.Harmony):  # chord symbols are not sounding notes
            continue
        length = float(element.quarterLength)
        if length <= 0:  # grace notes
            continue
        if isinstance(element, note.Note):
            members = [(element.pitch.midi, element.tie)]
        elif isinstance(element, chord.Chord):
            members = [(n.pitch.midi, n.tie if n.tie is not None else element.tie) for n in element.notes]
        else:  # unpitched percussion
            continue
        onset = float(element.offset)
        velocity = element.volume.velocity if element.volume is not None else None
        if velocity is None:
            i = int(np.searchsorted(dyn_offsets, onset, side="right")) - 1 if len(dyn) else -1
            velocity = dyn[i][1] if i >= 0 else DEFAULT_VELOCITY
        velocity = int(np.clip(velocity, 1, 127))
        for midi, tie in members:
            if not 0 <= midi <= 127:
                continue
            tie_type = tie.type if tie is not None else None
            row = open_ties.get(midi)
            if row is None and tie_type in ("stop", "continue") and len(members) == 1 and len(open_ties) == 1:
                # a tie joins one pitch; a mismatch is a spelling slip (ABC accidentals across a barline)
                row = next(iter(open_ties.values()))
                open_ties = {midi: row}
            if tie_type in ("stop", "continue") and row is not None:
                rows[row][1] = onset + length - rows[row][0]
                if tie_type == "stop":
                    del open_ties[midi]
                continue
            rows.append([onset, length, midi, velocity])
            if tie_type in ("start", "continue"):
                open_ties[midi] = len(rows) - 1
            else:
                open_ties.pop(midi, None)
    events = np.zeros(len(rows), dtype=NOTE_DTYPE)
    if rows:
        arr = np.array(rows, dtype=np.float64)
        events["onset_beats"] = arr[:, 0]
        events["duration_beats"] = arr[:, 1]
        events["pitch"] = arr[:, 2]
        events["velocity"] = arr[:, 3]
        events = events[np.lexsort((events["pitch"], events["onset_beats"]))]
    return events


def _has_repeats(score: Any) -> bool:
    from music21 import bar, repeat, spanner

    if any(isinstance(sp, spanner.RepeatBracket) for sp in score.spannerBundle):
        return True
    return any(isinstance(el, (bar.Repeat, repeat.RepeatMark)) for el in score.recurse())


def _downbeats(part: Any, bar_beats: float) -> tuple[list[float], float]:
    """(bar starts in beats, bar length in beats) from the part's measures.

    The bar length is the most common measure length (time signatures in ABC/Humdrum files are
    sometimes missing or wrong); pickups (a partial measure followed by a full one) are not bar
    starts.
    """
    measures = list(part.getElementsByClass("Measure"))
    if not measures:
        return [], bar_beats
    starts = [float(m.offset) for m in measures]
    lengths = [float(m.duration.quarterLength) for m in measures]
    positive = [length for length in lengths if length > 0]
    if positive:
        bar_beats = Counter(round(length, 4) for length in positive).most_common(1)[0][0]
    if bar_beats <= 0:
        return [], bar_beats
    full = [length >= 0.99 * bar_beats for length in lengths]
    downbeats = []
    for i, start in enumerate(starts):
        is_pickup = not full[i] and i + 1 < len(measures) and full[i + 1]
        if not is_pickup or i == len(measures) - 1:
            downbeats.append(start)
    if len(measures) > 1 and not full[0] and full[1]:
        downbeats = [b for b in downbeats if b != starts[0]]
    return downbeats, bar_beats


def _sections(
    downbeats: list[float], bar_beats: float, end_beats: float, seconds_per_beat: float
) -> np.ndarray:
    if bar_beats <= 0:
        bar_beats = 4.0
    bars = [b for b in downbeats if 0 < b < end_beats]
    if len(bars) < 2:
        bars = list(np.arange(bar_beats, end_beats, bar_beats))
    bar_s = bar_beats * seconds_per_beat
    k = min((1, 2, 4, 8, 16), key=lambda n: abs(math.log(n * bar_s / TARGET_SECTION_S)))
    # bars[0] is the first downbeat after a pickup, or the second bar; count bars from the piece start
    first = 0 if downbeats and downbeats[0] > 0 else 1
    grid = [b for i, b in enumerate(bars) if (i + first) % k == 0]
    bounds = [0.0, *grid, end_beats]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 0.34 * k * bar_beats:
        del bounds[-2]
    if len(bounds) > 2 and bounds[1] - bounds[0] < 0.34 * k * bar_beats:
        del bounds[1]
    return np.array(sorted(set(bounds)), dtype=np.float64)


def _gm_program(part: Any) -> int:
    try:
        inst = part.getInstrument(returnDefault=False)
    except Exception:
        return -1
    program = getattr(inst, "midiProgram", None) if inst is not None else None
    return int(program) if program is not None and 0 <= program <= 127 else -1


def parse_item(item: CorpusItem, min_duration_s: float = MIN_DURATION_S, min_notes: int = MIN_NOTES) -> Work:
    """Parse one corpus item into a Work; raises SkipWork with the reason when it is not usable."""
    from music21 import converter, meter, stream

    try:
        if item.abc_text is not None:
            parsed = converter.parseData(item.abc_text, format="abc")
        else:
            parsed = converter.parse(item.path)
    except Exception as exc:
        raise SkipWork(f"music21 cannot parse it: {type(exc).__name__}: {exc}") from exc
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if len(scores) != 1:
            raise SkipWork(f"an opus of {len(scores)} scores where one tune was expected")
        parsed = scores[0]
    score = parsed
    if _has_repeats(score):  # expandRepeats deep-copies the score: only when there are repeats
        try:
            expanded = score.expandRepeats()
            # inconsistent marks can make music21 repeat a tune dozens of times: keep it as written
            if expanded.highestTime <= MAX_REPEAT_EXPANSION * max(score.highestTime, 1.0):
                score = expanded
            else:
                log.debug("%s: repeats expand %.0f beats to %.0f: kept as written", item.work_id,
                          score.highestTime, expanded.highestTime)  # fmt: skip
        except Exception as exc:  # inconsistent repeat marks: keep the written order
            log.debug("%s: repeats not expanded (%s)", item.work_id, exc)
    parts_streams = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]

    first_flat = parts_streams[0].flatten()
    signatures = list(first_flat.getElementsByClass(meter.TimeSignature))
    if signatures:
        ts = signatures[0]
        meter_sig = (int(ts.numerator), int(ts.denominator))
        beat_beats = float(ts.beatDuration.quarterLength)
        bar_beats = float(ts.barDuration.quarterLength)
    else:
        meter_sig, beat_beats, bar_beats = (0, 0), 1.0, 0.0
    raw_parts = []
    for i, part in enumerate(parts_streams):
        events = _part_events(part)
        if len(events):
            name = str(getattr(part, "partName", None) or "") or f"part {i + 1}"
            raw_parts.append((name, _gm_program(part), events))
    if not raw_parts:
        raise SkipWork("no pitched notes")
    default_qpm = _default_quarter_bpm(
        beat_beats if signatures else None, skyline(raw_parts[0][2])["onset_beats"]
    )
    tempo_map, from_score = _tempo_map(score, default_qpm)
    parts = [Part(name=n, program=pr, events=_with_seconds(ev, tempo_map)) for n, pr, ev in raw_parts]
    n_notes = sum(len(p.events) for p in parts)
    if n_notes < min_notes:
        raise SkipWork(f"{n_notes} notes (fewer than {min_notes})")
    end_beats = max(float(np.max(p.events["onset_beats"] + p.events["duration_beats"])) for p in parts)
    start_beats = min(float(p.events["onset_beats"][0]) for p in parts)
    if start_beats > 0:  # leading rests: the work starts with its first note
        tempo_map = _shift_tempo_map(tempo_map, -start_beats)
        parts = [
            dataclasses.replace(p, events=_shift_beats(p.events, -start_beats, tempo_map)) for p in parts
        ]
        end_beats -= start_beats
    duration_s = float(beats_to_seconds(np.array([end_beats]), tempo_map)[0])
    if duration_s < min_duration_s:
        raise SkipWork(f"{duration_s:.1f} s at the nominal tempo (shorter than {min_duration_s} s)")
    downbeats, bar_beats = _downbeats(parts_streams[0], bar_beats)
    downbeats = [b - start_beats for b in downbeats]
    sections = _sections(downbeats, bar_beats, end_beats, 60.0 / float(tempo_map[0, 1]))

    md = score.metadata
    title = (md.title if md is not None and md.title else None) or Path(item.rel_path).stem
    composer = (md.composer if md is not None and md.composer else "") or ""
    return Work(
        work_id=item.work_id,
        title=str(title),
        source=_source_of(item.rel_path),
        composer=str(composer),
        parts=tuple(parts),
        tempo_map=tempo_map,
        tempo_from_score=from_score,
        sections_beats=sections,
        meter=meter_sig,
        beat_beats=beat_beats,
    )


def _shift_tempo_map(tempo_map: np.ndarray, shift: float) -> np.ndarray:
    """The tempo map of a timeline moved by `shift` beats (rows before beat 0 fold into the first)."""
    moved = tempo_map.copy()
    moved[:, 0] += shift
    first = max(int(np.searchsorted(moved[:, 0], 0.0, side="right")) - 1, 0)
    moved = moved[first:]
    moved[0, 0] = 0.0
    return moved


def _shift_beats(events: np.ndarray, shift: float, tempo_map: np.ndarray) -> np.ndarray:
    out = events.copy()
    out["onset_beats"] += shift
    return _with_seconds(out, tempo_map)


def _parse_or_reason(
    args: tuple[CorpusItem, float, int],
) -> tuple[str, Work | None, str, float]:
    item, min_duration_s, min_notes = args
    start = time.perf_counter()
    try:
        work = parse_item(item, min_duration_s, min_notes)
        return item.work_id, work, "", time.perf_counter() - start
    except SkipWork as exc:
        return item.work_id, None, str(exc), time.perf_counter() - start
    except Exception as exc:  # a bug in music21 on one odd score must not stop an hour-long extraction
        return item.work_id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# De-duplication


def melody_intervals(work: Work) -> np.ndarray:
    """The melody's intervals in semitones (clipped to ±24), repeated notes collapsed, int64 [m].

    Transposition-free and rhythm-free: the same tune in another key, meter or note-value scale,
    or with a long note split into repeated ones, gives the same sequence.
    """
    pitches = work.melody()["pitch"].astype(np.int64)
    if len(pitches):
        pitches = pitches[np.concatenate([[True], np.diff(pitches) != 0])]
    return np.clip(np.diff(pitches), -24, 24)


def melody_shingles(work: Work, length: int = SHINGLE_LENGTH) -> np.ndarray:
    """Sorted unique int64 codes of `length` consecutive intervals of `melody_intervals`."""
    return _shingles(melody_intervals(work), length)


def _shingles(intervals: np.ndarray, length: int) -> np.ndarray:
    digits = intervals + 24  # 0..48
    if len(digits) < length:
        return np.array([_hash_ints(digits)], dtype=np.int64) if len(digits) else digits
    windows = np.lib.stride_tricks.sliding_window_view(digits, length)
    codes = np.zeros(len(windows), dtype=np.int64)
    for j in range(length):  # base-49 digits: exact for length ≤ 11
        codes = codes * 49 + windows[:, j]
    return np.unique(codes)


def _hash_ints(values: np.ndarray) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(values, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def containment_edit_distance(short: np.ndarray, long: np.ndarray) -> int:
    """Fewest substitutions/insertions/deletions that turn `short` into some substring of `long`
    (semi-global Levenshtein: the ends of `long` are free). Vectorised over `long`."""
    n = len(long)
    row = np.zeros(n + 1, dtype=np.int64)  # free start anywhere in `long`
    ramp = np.arange(n + 1, dtype=np.int64)
    for i, value in enumerate(short.tolist(), start=1):
        cur = np.empty(n + 1, dtype=np.int64)
        cur[0] = i
        cur[1:] = np.minimum(row[:-1] + (long != value), row[1:] + 1)  # substitute / delete
        cur = np.minimum.accumulate(cur - ramp) + ramp  # insertions: cur[j] ≤ cur[j-1] + 1
        row = cur
    return int(row.min())  # free end anywhere in `long`


class Deduplicator:
    """Incremental near-duplicate filter over melodies (order decides which copy is kept).

    `check(work)` returns the work_id of an earlier kept work with the same melody, or None after
    recording the work as kept. Candidates are kept works sharing interval shingles (ignoring
    shingles already in more than `max_postings` kept works: scale and arpeggio commonplaces)
    whose melodies have comparable lengths (MIN_LENGTH_RATIO); a candidate is the same melody
    when `containment` of the smaller shingle set is shared (at least MIN_SHARED_SHINGLES), or
    when the shorter interval sequence is within `max_edit_share` edits per interval of a stretch
    of the longer one (ornaments, passing notes, variant readings).
    """

    def __init__(
        self,
        containment: float = DUPLICATE_CONTAINMENT,
        max_postings: int = SHINGLE_MAX_POSTINGS,
        max_edit_share: float = DUPLICATE_EDIT_SHARE,
    ) -> None:
        self.containment = containment
        self.max_postings = max_postings
        self.max_edit_share = max_edit_share
        self._postings: dict[int, list[int]] = {}
        self._ids: list[str] = []
        self._sizes: list[int] = []
        self._intervals: list[np.ndarray] = []

    def check(self, work: Work) -> str | None:
        intervals = melody_intervals(work)
        shingles = _shingles(intervals, SHINGLE_LENGTH).tolist()
        counts: Counter[int] = Counter()
        for s in shingles:
            posting = self._postings.get(s)
            if posting is not None and len(posting) <= self.max_postings:
                counts.update(posting)
        for other, shared in counts.most_common(8):
            a, b = intervals, self._intervals[other]
            short, long = (a, b) if len(a) <= len(b) else (b, a)
            if len(short) < MIN_LENGTH_RATIO * len(long):
                continue  # a short tune is not "contained" in a long polyphonic line by chance
            smaller = max(1, min(len(shingles), self._sizes[other]))
            if shared >= max(MIN_SHARED_SHINGLES, self.containment * smaller):
                return self._ids[other]
            if (
                shared >= max(2, CANDIDATE_SHARE * smaller)
                and len(short) >= MIN_EDIT_COMPARE
                and containment_edit_distance(short, long) <= self.max_edit_share * len(short)
            ):
                return self._ids[other]
        index = len(self._ids)
        self._ids.append(work.work_id)
        self._sizes.append(len(shingles))
        self._intervals.append(intervals)
        for s in shingles:
            self._postings.setdefault(s, []).append(index)
        return None


def dedupe_works(works: Iterable[Work]) -> tuple[list[Work], dict[str, str]]:
    """Drop near-duplicate melodies: (kept works in order, {dropped work_id: kept work_id})."""
    dedup = Deduplicator()
    kept, dropped = [], {}
    for work in works:
        same = dedup.check(work)
        if same is None:
            kept.append(work)
        else:
            dropped[work.work_id] = same
    return kept, dropped


def split_works(works: Sequence[Work], test_size: float, seed: int = 0) -> tuple[list[Work], list[Work]]:
    """Split works into (train, test) by work: deterministic in (seed, work ids), independent of order.

    test_size: a number of works (>= 1) or a fraction (< 1). Works are ranked by a hash of
    (seed, work_id); the lowest ranked go to test. Run on de-duplicated works, no melody is on
    both sides. Both lists keep the input order.
    """
    n_test = int(test_size) if test_size >= 1 else round(test_size * len(works))
    if not 0 <= n_test <= len(works):
        raise ValueError(f"test_size {test_size} does not fit {len(works)} works")
    ids = [w.work_id for w in works]
    if len(set(ids)) != len(ids):
        raise ValueError("work ids must be unique")

    def rank(work_id: str) -> bytes:
        return hashlib.blake2b(f"{seed}:{work_id}".encode(), digest_size=8).digest()

    test_ids = set(sorted(ids, key=rank)[:n_test])
    return [w for w in works if w.work_id not in test_ids], [w for w in works if w.work_id in test_ids]


# ---------------------------------------------------------------------------------------------
# Extraction


@dataclasses.dataclass
class ExtractionReport:
    """What `extract_works` did: counts per outcome and per collection, time spent."""

    n_items: int = 0
    n_kept: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # work_id → reason
    duplicates: dict[str, str] = dataclasses.field(default_factory=dict)  # dropped → kept work_id
    kept_per_source: dict[str, int] = dataclasses.field(default_factory=dict)
    parse_seconds: float = 0.0  # summed over workers
    wall_seconds: float = 0.0


def extract_works(
    limit: int | None = None,
    sources: Sequence[str] = DEFAULT_SOURCES,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    min_duration_s: float = MIN_DURATION_S,
    min_notes: int = MIN_NOTES,
    dedupe: bool = True,
    work_ids: Sequence[str] | None = None,
    report: ExtractionReport | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> list[Work]:
    """Parse music21's bundled corpus into distinct works.

    limit: stop once this many works are kept; sources: collections or corpus-relative path
    prefixes (see `iter_corpus_items`), also the de-duplication priority; progress(n_done, n_total)
    is called after each parsed item; workers: parsing processes (1 = in this process);
    work_ids: only these items (ids as in Work.work_id); report: filled with counts and timings;
    checkpoint_dir: every CHECKPOINT_ITEMS parsed items of a source are saved there
    (``<source>.<chunk>.npz``: the usable works before de-duplication and the skip reasons) and
    loaded instead of parsed by the next call with the same settings, so an interrupted
    extraction resumes where it stopped.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    report = report if report is not None else ExtractionReport()
    start = time.perf_counter()
    groups: list[tuple[str, list[CorpusItem]]] = []
    for source, item in _iter_source_items(sources):
        if not groups or groups[-1][0] != source:
            groups.append((source, []))
        groups[-1][1].append(item)
    if work_ids is not None:
        wanted = set(work_ids)
        groups = [(src, [it for it in items if it.work_id in wanted]) for src, items in groups]
        missing = wanted - {it.work_id for _, items in groups for it in items}
        if missing:
            raise ValueError(f"work ids not in the selected corpus sources: {sorted(missing)[:5]}")
    total = sum(len(items) for _, items in groups)
    dedup = Deduplicator() if dedupe else None
    kept: list[Work] = []
    settings = {"min_duration_s": min_duration_s, "min_notes": min_notes}

    def consume(results: Iterable[tuple[str, Work | None, str, float]], parsed: list[Work]) -> bool:
        """Feed results to the filter; False when `limit` is reached."""
        for work_id, work, reason, seconds in results:
            report.n_items += 1
            report.parse_seconds += seconds
            if work is None:
                report.skipped[work_id] = reason
                log.debug("skip %s: %s", work_id, reason)
            else:
                parsed.append(work)
                same = dedup.check(work) if dedup is not None else None
                if same is None:
                    kept.append(work)
                    report.kept_per_source[work.source] = report.kept_per_source.get(work.source, 0) + 1
                else:
                    report.duplicates[work_id] = same
            if progress is not None:
                progress(report.n_items, total)
            if limit is not None and len(kept) >= limit:
                return False
        return True

    pool: ProcessPoolExecutor | None = None
    if workers > 1 and total > 1:
        # spawn: the caller may hold threads (torch) that fork would copy in a locked state
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for source, items in groups:
            for lo in range(0, len(items), CHECKPOINT_ITEMS):
                chunk = items[lo : lo + CHECKPOINT_ITEMS]
                checkpoint = (
                    Path(checkpoint_dir)
                    / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', source)}.{lo // CHECKPOINT_ITEMS:03d}.npz"
                    if checkpoint_dir is not None and work_ids is None
                    else None
                )
                key = {
                    "source": source,
                    "first": chunk[0].work_id,
                    "last": chunk[-1].work_id,
                    "n_items": len(chunk),
                }
                saved = _load_checkpoint(checkpoint, {**key, **settings}) if checkpoint else None
                parsed: list[Work] = []
                if saved is not None:
                    works, skipped = saved
                    results: Iterable[tuple[str, Work | None, str, float]] = [
                        *((w.work_id, w, "", 0.0) for w in works),
                        *((wid, None, reason, 0.0) for wid, reason in skipped.items()),
                    ]
                    log.info("%s: %d works from checkpoint %s", source, len(works), checkpoint)
                else:
                    tasks = ((it, min_duration_s, min_notes) for it in chunk)
                    results = (
                        pool.map(_parse_or_reason, tasks, chunksize=8)
                        if pool
                        else map(_parse_or_reason, tasks)
                    )
                skipped_before = set(report.skipped)
                if not consume(results, parsed):
                    return _finish(kept, report, start)
                if checkpoint is not None and saved is None:
                    skipped_here = {k: v for k, v in report.skipped.items() if k not in skipped_before}
                    extra = {**key, **settings, "skipped": skipped_here}
                    save_note_corpus(checkpoint, parsed, extra={"checkpoint": extra})
    finally:
        if pool is not None:  # after `limit` works: drop the items not started yet
            pool.shutdown(wait=True, cancel_futures=True)
    return _finish(kept, report, start)


def _finish(kept: list[Work], report: ExtractionReport, start: float) -> list[Work]:
    report.n_kept = len(kept)
    report.wall_seconds = time.perf_counter() - start
    log.info(
        "extracted %d works from %d items (%d skipped, %d duplicates) in %.1f s",
        len(kept),
        report.n_items,
        len(report.skipped),
        len(report.duplicates),
        report.wall_seconds,
    )
    return kept


def _load_checkpoint(path: Path, expected: dict[str, Any]) -> tuple[list[Work], dict[str, str]] | None:
    """A chunk's checkpoint (works, skip reasons) if it is for the same items and settings."""
    if not path.is_file():
        return None
    try:
        works, extra = load_note_corpus_with_extra(path)
    except NoteCorpusError as exc:
        log.warning("ignoring checkpoint %s: %s", path, exc)
        return None
    meta = extra.get("checkpoint", {})
    if any(meta.get(k) != v for k, v in expected.items()):
        log.info("checkpoint %s is for other items or settings: parsing again", path)
        return None
    return works, dict(meta.get("skipped", {}))


# ---------------------------------------------------------------------------------------------
# Cache


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary file in the same folder, fsync, rename, fsync the folder),
    with the permissions a plain open() would give (mkstemp's are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def save_note_corpus(
    path: str | os.PathLike[str], works: Sequence[Work], extra: dict[str, Any] | None = None
) -> None:
    """Write works to one compressed ``.npz`` (no pickle): event columns + a JSON index. Atomic.

    extra: JSON-serialisable provenance stored with the index (e.g. the extraction report).
    """
    path = Path(path)
    index: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "works": [],
        "extra": extra or {},
    }
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("onset", "duration", "pitch", "velocity")}
    sections, tempo_rows = [], []
    for work in works:
        index["works"].append(
            {
                "work_id": work.work_id,
                "title": work.title,
                "source": work.source,
                "composer": work.composer,
                "tempo_from_score": work.tempo_from_score,
                "meter": list(work.meter),
                "beat_beats": work.beat_beats,
                "n_sections": work.n_sections,
                "n_tempo": len(work.tempo_map),
                "parts": [
                    {"name": p.name, "program": p.program, "n_events": len(p.events)} for p in work.parts
                ],
            }
        )
        for p in work.parts:
            columns["onset"].append(p.events["onset_beats"])
            columns["duration"].append(p.events["duration_beats"])
            columns["pitch"].append(p.events["pitch"])
            columns["velocity"].append(p.events["velocity"])
        sections.append(work.sections_beats)
        tempo_rows.append(work.tempo_map)

    def cat(arrays: list[np.ndarray], dtype: str) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

    arrays: dict[str, np.ndarray] = {
        "index_json": np.frombuffer(json.dumps(index, ensure_ascii=False).encode(), dtype=np.uint8),
        # beats are multiples of small fractions: float32 keeps them to < 1e-4 beat in any score
        "onset_beats": cat(columns["onset"], "<f4"),
        "duration_beats": cat(columns["duration"], "<f4"),
        "pitch": cat(columns["pitch"], "u1"),
        "velocity": cat(columns["velocity"], "u1"),
        "sections_beats": cat(sections, "<f8"),
        "tempo_map": np.concatenate(tempo_rows).astype("<f8") if tempo_rows else np.zeros((0, 2)),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    _atomic_write_bytes(path, buffer.getvalue())


class NoteCorpusError(ValueError):
    """A note-corpus cache file that is missing, corrupt or of another format."""


def load_note_corpus(path: str | os.PathLike[str]) -> list[Work]:
    """Read works written by `save_note_corpus` (seconds are recomputed from each tempo map)."""
    works, _ = load_note_corpus_with_extra(path)
    return works


def load_note_corpus_with_extra(path: str | os.PathLike[str]) -> tuple[list[Work], dict[str, Any]]:
    """`load_note_corpus` plus the `extra` provenance dict saved with it."""
    path = Path(path)
    if not path.is_file():
        raise NoteCorpusError(f"no note corpus at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        index = json.loads(arrays["index_json"].tobytes().decode())
    except Exception as exc:
        raise NoteCorpusError(f"{path} is not a readable note corpus: {type(exc).__name__}: {exc}") from exc
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise NoteCorpusError(
            f"{path}: format {index.get('format')!r} v{index.get('version')!r}, "
            f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}"
        )
    n_events = sum(p["n_events"] for w in index["works"] for p in w["parts"])
    n_sections = sum(w["n_sections"] + 1 for w in index["works"])
    n_tempo = sum(w["n_tempo"] for w in index["works"])
    sizes = {k: len(arrays[k]) for k in ("onset_beats", "duration_beats", "pitch", "velocity")}
    if set(sizes.values()) != {n_events} and not (n_events == 0 and set(sizes.values()) <= {0}):
        raise NoteCorpusError(f"{path} is corrupt: index lists {n_events} events, arrays hold {sizes}")
    if len(arrays["sections_beats"]) != n_sections or len(arrays["tempo_map"]) != n_tempo:
        raise NoteCorpusError(f"{path} is corrupt: section/tempo arrays do not match the index")

    works = []
    e = s = t = 0
    for w in index["works"]:
        tempo_map = arrays["tempo_map"][t : t + w["n_tempo"]].astype(np.float64)
        t += w["n_tempo"]
        sections = arrays["sections_beats"][s : s + w["n_sections"] + 1].astype(np.float64)
        s += w["n_sections"] + 1
        parts = []
        for p in w["parts"]:
            n = p["n_events"]
            events = np.zeros(n, dtype=NOTE_DTYPE)
            events["onset_beats"] = arrays["onset_beats"][e : e + n]
            events["duration_beats"] = arrays["duration_beats"][e : e + n]
            events["pitch"] = arrays["pitch"][e : e + n]
            events["velocity"] = arrays["velocity"][e : e + n]
            e += n
            parts.append(
                Part(name=p["name"], program=int(p["program"]), events=_with_seconds(events, tempo_map))
            )
        works.append(
            Work(
                work_id=w["work_id"],
                title=w["title"],
                source=w["source"],
                composer=w["composer"],
                parts=tuple(parts),
                tempo_map=tempo_map,
                tempo_from_score=bool(w["tempo_from_score"]),
                sections_beats=sections,
                meter=(int(w["meter"][0]), int(w["meter"][1])),
                beat_beats=float(w["beat_beats"]),
            )
        )
    return works, index.get("extra", {})
